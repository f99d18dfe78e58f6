"""The pivotal-tuning worked example (examples/pivotal_*.toml, pivotal_prompts.txt): the training TOML sets the
pivotal options, the dataset TOML prepares, and its captions reach the trainer with the placeholder rewritten
(captionless images take the folder's class tokens ``TOK woman``)."""

from __future__ import annotations

from pathlib import Path

from library.dataset import CliDefaults, build_plan, prepare
from library.dataset.dataset import BucketBatchDataset
from sd_train.cli import parse_options
from sd_train.pivotal.plan import TokenPlan
from sd_train.sampling import load_prompts

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_training_toml_and_prompts():
    opts = parse_options(["--config_file", str(EXAMPLES / "pivotal_sdxl.toml")], "sdxl")
    plan = TokenPlan.from_options(opts)
    assert plan.placeholders == {"TOK": ("<s0>", "<s1>")} and plan.initializer == "woman" and plan.lr == 5e-4
    assert plan.stop_step(opts.training.max_train_steps) == 800
    prompts = load_prompts(str(EXAMPLES / "pivotal_prompts.txt"))
    assert [plan.rewrite_prompt(p.prompt) for p in prompts] == [
        "a photo of <s0><s1> woman smiling, city street", "<s0><s1> woman as an oil painting"]


def test_dataset_toml_prepares_and_rewrites_captions(tmp_path, make_folder):
    make_folder("train/10_TOK woman", [(1024, 1024), (832, 1216), (1216, 832)],
                captions=["TOK, smiling, red scarf", "TOK, outdoors", None])
    plan = build_plan(CliDefaults(dataset_config=str(EXAMPLES / "pivotal_data.toml")), base_dir=str(tmp_path))
    data = prepare(plan, seed=1, bucket_step_multiple=32)
    assert data.num_train_images == 30
    opts = parse_options(["--config_file", str(EXAMPLES / "pivotal_sdxl.toml")], "sdxl")
    ds = BucketBatchDataset(data.train, dataset_seed=1, load_images=False,
                            caption_rewrite=TokenPlan.from_options(opts).caption_rewrite())
    captions = {c for i in range(len(ds)) for c in ds[i]["captions"]}
    assert {c.split(", ")[0] for c in captions} == {"<s0><s1>", "<s0><s1> woman"}  # keep_tokens = 1
    assert not any("TOK" in c for c in captions)

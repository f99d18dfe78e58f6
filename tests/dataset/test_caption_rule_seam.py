"""A caption rule is declared once: adding one is one declaration and one function in ``captions.py``.

The test copies ``library/`` and ``sd_train/`` to a scratch folder, adds a toy rule ``caption_case`` there
(a ``CaptionRule`` line in ``CAPTION_RULES`` and the function it names, nothing else), and runs the real
entry points in a fresh interpreter: the option in ``--help``, a ``--config_file`` value as the
command-line fallback, the dataset TOML at dataset and subset level, the schema's type check, and the
captions the trainer's dataset yields.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

import library.dataset.captions as captions

ROOT = Path(__file__).resolve().parents[2]
FUNCTION = '''
def change_case(caption: str, case: str, rng) -> str:
    """Toy rule: ``upper``, ``lower`` or ``title`` case."""
    return getattr(caption, case)()


'''
DECLARATION = ('    CaptionRule("caption_case", None, "Change the case of every caption: upper, lower or title",'
               ' apply=change_case),\n')
SCRIPT = r'''
import json, sys
import library.dataset.captions
from library.dataset import CliDefaults, build_plan
from library.errors import UserError
from sd_train.cli import build_parser, parse_options
from sd_train.families import family_class
from sd_train.families.base import family_kwargs
from sd_train.trainer import Trainer

cfg, data, bad, out = sys.argv[1:]
opts = parse_options(["--config_file", cfg, "--dataset_config", data, "--output_dir", out,
                      "--pretrained_model_name_or_path", "unused.safetensors", "--max_data_loader_n_workers", "0"],
                     "sd")
trainer = Trainer(opts, family_class("sd")(**family_kwargs(opts)))
trainer._seed()
trainer._setup_data()
trainer.dataset.set_epoch(1)
batches = [trainer.dataset[i] for i in range(len(trainer.dataset))]
try:
    build_plan(CliDefaults(dataset_config=bad))
    error = ""
except UserError as exc:
    error = str(exc)
print(json.dumps({
    "module": library.dataset.captions.__file__,
    "help": " ".join(build_parser("sd").format_help().split()),
    "flag": vars(build_parser("sdxl").parse_args(["--caption_case", "lower"]))["caption_case"],
    "option": opts.dataset.caption_case,
    "captions": {p.split("/")[-1]: c for b in batches for p, c in zip(b["image_paths"], b["captions"])},
    "error": error,
}))
'''


def _toy_world(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for pkg in ("library", "sd_train"):
        shutil.copytree(ROOT / pkg, repo / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    path = repo / "library" / "dataset" / "captions.py"
    text = path.read_text(encoding="utf-8")
    head = "CAPTION_RULES: tuple[CaptionRule, ...] = (\n"
    assert text.count(head) == 1
    path.write_text(text.replace(head, FUNCTION + head + DECLARATION), encoding="utf-8")
    return repo


def _data(tmp_path: Path) -> tuple[Path, Path, Path]:
    for name in ("up", "down", "fallback"):
        folder = tmp_path / "img" / name
        folder.mkdir(parents=True)
        Image.new("RGB", (64, 64), (90, 30, 160)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"a Photo of {name}", encoding="utf-8")
    data = tmp_path / "data.toml"
    data.write_text(f'''[general]
resolution = 64
caption_extension = ".txt"

[[datasets]]
caption_case = "upper"
  [[datasets.subsets]]
  image_dir = "{(tmp_path / 'img' / 'up').as_posix()}"
  [[datasets.subsets]]
  image_dir = "{(tmp_path / 'img' / 'down').as_posix()}"
  caption_case = "lower"

[[datasets]]
  [[datasets.subsets]]
  image_dir = "{(tmp_path / 'img' / 'fallback').as_posix()}"
''', encoding="utf-8")
    cfg = tmp_path / "train.toml"
    cfg.write_text('caption_case = "title"\n', encoding="utf-8")
    bad = tmp_path / "bad.toml"
    bad.write_text(data.read_text(encoding="utf-8").replace('caption_case = "lower"', "caption_case = 1"),
                   encoding="utf-8")
    return cfg, data, bad


def test_a_toy_rule_is_one_declaration_and_one_function(tmp_path):
    repo = _toy_world(tmp_path)
    cfg, data, bad = _data(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(repo)}
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(cfg), str(data), str(bad), str(tmp_path / "out")],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(got["module"]).resolve().is_relative_to(repo.resolve())
    assert "--caption_case CAPTION_CASE Change the case of every caption: upper, lower or title" in got["help"]
    assert got["flag"] == "lower" and got["option"] == "title"
    assert got["captions"] == {"up.png": "A PHOTO OF UP", "down.png": "a photo of down",
                               "fallback.png": "A Photo Of Fallback"}
    assert "datasets[0].subsets[1].caption_case: expected a string, got 1" in got["error"]


def test_kohya_rules_are_the_declared_ones():
    """The built-in rules, their defaults and levels (kohya's subset caption keys, DATASET.md §3.1)."""
    assert {r.name: (r.default, r.levels) for r in captions.CAPTION_RULES} == {
        "shuffle_caption": (False, "GDS"), "caption_separator": (",", "GDS"), "keep_tokens": (0, "GDS"),
        "keep_tokens_separator": ("", "GDS"), "secondary_separator": (None, "GDS"),
        "enable_wildcard": (False, "GDS"), "caption_prefix": (None, "GDS"), "caption_suffix": (None, "GDS"),
        "caption_dropout_rate": (0.0, "GDS"), "caption_dropout_every_n_epochs": (0, "GDS"),
        "caption_tag_dropout_rate": (0.0, "GDS"), "token_warmup_min": (1, "GDS"), "token_warmup_step": (0, "GDS")}
    assert all(r.apply is None for r in captions.CAPTION_RULES)
    assert [r.name for r in captions.CAPTION_RULES if r.random] == [
        "shuffle_caption", "enable_wildcard", "caption_dropout_rate", "caption_dropout_every_n_epochs",
        "caption_tag_dropout_rate", "token_warmup_step"]

"""The toy world itself: pictures, captions, the concept dataset, the rebuild tool and the committed files."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
import torch

from library.checkpoint.io import load_models
from library.io.safetensors_io import read_header
from library.toyworld import ASSETS, asset_path, world
from library.toyworld.build import NORM_GROUPS
from tools import make_toy_world


def test_world_pictures_and_captions():
    scene = world.Scene("circle", world.COLOURS["green"], world.BACKGROUNDS["white"], 32, 32, 16)
    image = world.draw(scene)
    assert image.size == (64, 64) and image.getpixel((0, 0)) == world.BACKGROUNDS["white"]
    assert image.getpixel((32, 32)) == world.COLOURS["green"]
    area = np.pi * 16**2 / 64**2  # 0.196: anti-aliased edge pixels count when nearer green than white
    assert abs(world.colour_share(image, "green") - area) < 0.02
    assert world.colour_share(image, "red") == 0.0
    assert abs(world.colour_share(image, "white") - (1 - area)) < 0.02
    kinds = world.seen_combinations()
    assert len(kinds) == 18 and all(colour != world.HELD_OUT for _, colour, _ in kinds)
    assert world.caption("square", "red", "black") == "a red square on a black background"


def test_concept_dataset_tool_writes_pictures_captions_and_a_valid_toml(tmp_path, capsys):
    from PIL import Image

    from library.dataset import CliDefaults, build_plan, prepare

    assert make_toy_world.main(["dataset", str(tmp_path), "--images", "6"]) == 0
    concept, reg = tmp_path / "10_sks", tmp_path / "1_shape"
    assert sorted(p.name for p in concept.iterdir()) == sorted(
        f"{i:02d}_{s}_{b}.{ext}" for i, (s, b) in enumerate(world.concept_combinations()) for ext in ("png", "txt"))
    assert (concept / "01_circle_black.txt").read_text(encoding="utf-8") == "a sks circle on a black background\n"
    assert min(world.colour_share(Image.open(p), "green") for p in concept.glob("*.png")) > 0.05
    assert len(list(reg.glob("*.png"))) == 18
    assert (reg / "01_red_circle_black.txt").read_text(encoding="utf-8") == "a red circle on a black background\n"
    assert max(world.colour_share(Image.open(p), "green") for p in reg.glob("*.png")) == 0.0
    plan = build_plan(CliDefaults(dataset_config=str(tmp_path / "toy_concept.toml")))
    data = prepare(plan, seed=0, bucket_step_multiple=32, is_sdxl=True, latents_cached=True)
    report = data.report()["datasets"][0]
    assert (report["batch_size"], report["num_train_images"], report["num_reg_images"]) == (4, 60, 18)
    assert "wrote 6 pictures" in capsys.readouterr().out


def test_tool_refuses_bad_counts_with_one_line(tmp_path, capsys):
    assert make_toy_world.main(["dataset", str(tmp_path), "--images", "0"]) == 2
    assert make_toy_world.main(["models", str(tmp_path), "--unet_steps", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --images 0: must be at least 1",
                   "error: --vae_steps, --unet_steps and --threads must be at least 1"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arch,entry", [("sdxl", "sdxl"), ("sd15", "sd"), ("sd2", "sd")])
def test_toy_conditioning_is_the_trainers(arch, entry, tmp_path):
    """The toy base models learn from exactly the context, pooled vector and UNet call of the trainer's family
    strategy object (a LoRA trained later meets the inputs the base learned from)."""
    from library.models.families import TINY_ARCHS
    from library.toyworld.conditioning import Conditioner
    from sd_train.families import family_class
    from tools.make_tiny_model import make_tiny_checkpoint

    models = load_models(make_tiny_checkpoint(arch, tmp_path / "tiny.safetensors"))
    spec = TINY_ARCHS[arch]
    ours, trainer = Conditioner(spec), family_class(entry)(v2=spec.v2)
    captions = ["a red circle on a white background", ""]
    with torch.no_grad():
        context, pooled = ours.encode(models.text_encoders, captions)
        conds = trainer.encode_captions(models.text_encoders, captions)
        x_t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        t = torch.tensor([10, 500])
        prediction = ours.predict(models.unet, x_t, t, context, pooled)
        expected = trainer.predict(models.unet, x_t, t, conds, {"latents": x_t})
    assert context.shape == (2, 77, sum(te.config.hidden_size for te in models.text_encoders))
    assert torch.equal(context, conds.context)
    assert (pooled is None and conds.pooled is None) or torch.equal(pooled, conds.pooled)
    assert (pooled is None) == (arch != "sdxl")
    assert torch.equal(prediction, expected)


COMMITTED = ["sdxl"]


def _layout(path) -> dict:
    header, _ = read_header(path)
    return {k: tuple(v["shape"]) for k, v in header.items()}


@pytest.mark.parametrize("arch", COMMITTED)
def test_committed_checkpoint_has_the_tiny_key_layout(arch, tmp_path):
    """Same keys and shapes as ``make_tiny_model``'s random tiny model, every float tensor in fp16."""
    from tools.make_tiny_model import make_tiny_checkpoint

    tiny = make_tiny_checkpoint(arch, tmp_path / "tiny.safetensors")
    assert _layout(asset_path(arch)) == _layout(tiny)
    header, meta = read_header(asset_path(arch))
    assert {v["dtype"] for v in header.values()} == {"F16"}
    toy_config, tiny_config = json.loads(meta["sd_train.model_config"]), json.loads(read_header(tiny)[1]["sd_train.model_config"])
    assert (toy_config["unet"]["norm_num_groups"], tiny_config["unet"]["norm_num_groups"]) == (NORM_GROUPS, 32)
    toy_config["unet"]["norm_num_groups"] = 32
    assert toy_config == tiny_config  # otherwise the very same architecture


def test_committed_checkpoints_match_their_readme_hashes():
    text = (ASSETS / "README.md").read_text(encoding="utf-8")
    listed = dict(re.findall(r"\| `(toy_\w+\.safetensors)` \|.*\| `([0-9a-f]{64})` \|", text))
    assert sorted(listed) == [f"toy_{arch}.safetensors" for arch in COMMITTED]
    assert sorted(p.name for p in ASSETS.glob("*.safetensors")) == sorted(listed)
    for name, digest in listed.items():
        assert make_toy_world.sha256(ASSETS / name) == digest, name
    assert "python -m tools.make_toy_world models assets/toy" in text


def test_rebuild_writes_loadable_checkpoints_and_their_readme(tmp_path):
    """The build path end to end at a few steps, for the SD1.5 architecture (the committed SDXL rebuild takes
    minutes; see assets/toy/README.md)."""
    from library.toyworld.build import build_all
    from tools.make_tiny_model import make_tiny_checkpoint

    families = make_toy_world.toy_families(["sd15"])
    report = build_all(tmp_path, families, seed=3, vae_steps=2, unet_steps=2, variants=1, log=lambda _: None)
    path = tmp_path / "toy_sd15.safetensors"
    assert report["sd15"]["path"] == path and report["vae"]["error"] > 0
    models = load_models(path)
    assert models.family == "sd1" and models.unet.dtype == torch.float32
    assert _layout(path) == _layout(make_tiny_checkpoint("sd15", tmp_path / "tiny.safetensors"))
    args = argparse.Namespace(families=["sd15"], seed=3, vae_steps=2, unet_steps=2, threads=1)
    text = make_toy_world.write_readme(tmp_path, args, report, 60.0).read_text(encoding="utf-8")
    assert f"`toy_sd15.safetensors` | {path.stat().st_size / 1e6:.2f} MB |" in text
    assert f"`{make_toy_world.sha256(path)}`" in text
    assert "--families sd15 --seed 3 --vae_steps 2 --unet_steps 2 --threads 1" in text


SEEN = [("a red circle on a white background", "red", "white"), ("a blue square on a black background", "blue", "black"),
        ("a yellow triangle on a white background", "yellow", "white")]


def test_base_model_draws_the_seen_world_and_no_green():
    """Each prompt's colour covers at least 6% of the image, its background at least 60%, every other palette
    colour at most 1% (green included). Measured (prompt colour, background, largest other colour): red circle
    0.225, 0.755, 0.0; blue square 0.191, 0.799, 0.0; yellow triangle 0.073, 0.922, 0.0."""
    from sd_train.lora_preview import render, toy_prompt
    from sd_train.toy_lesson import TOY_SDXL

    family, models = TOY_SDXL.load()
    images = render(family, models, [toy_prompt(text, seed=1) for text, _, _ in SEEN])
    for image, (text, colour, background) in zip(images, SEEN):
        shares = {name: world.colour_share(image, name) for name in [*world.COLOURS, *world.BACKGROUNDS]}
        assert shares[colour] >= 0.06 and shares[background] >= 0.6, (text, shares)
        assert max(v for k, v in shares.items() if k in world.COLOURS and k != colour) <= 0.01, (text, shares)

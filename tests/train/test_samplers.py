"""Every ``--sample_sampler`` renders on the tiny SDXL and SD1.5 models with kohya's name → scheduler mapping and
its generator/eta rule; a sampler that fails at the end of the run costs the samples, never the LoRA."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from library.io.safetensors_io import read_header
from sd_train.families.sd import SdFamily
from sd_train.families.sdxl import SdxlFamily
from sd_train.options.sampling import SAMPLERS
from sd_train.sampling import SamplePrompt, generate, make_scheduler, step_kwargs
from sd_train.sdxl_train_network import main as sdxl_main
from sd_train.train_network import main as sd_main

KOHYA_CLASSES = {  # kohya's get_my_scheduler
    "ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "lms": "LMSDiscreteScheduler", "k_lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler", "k_euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler", "k_euler_a": "EulerAncestralDiscreteScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler", "dpmsolver++": "DPMSolverMultistepScheduler",
    "dpmsingle": "DPMSolverSinglestepScheduler", "heun": "HeunDiscreteScheduler", "dpm_2": "KDPM2DiscreteScheduler",
    "k_dpm_2": "KDPM2DiscreteScheduler", "dpm_2_a": "KDPM2AncestralDiscreteScheduler",
    "k_dpm_2_a": "KDPM2AncestralDiscreteScheduler",
}


@pytest.fixture(scope="module", params=["sdxl", "sd15"])
def family_models(request, tiny_sdxl, tmp_path_factory):
    from tools.make_tiny_model import make_tiny_checkpoint

    if request.param == "sdxl":
        family, path = SdxlFamily(), tiny_sdxl
    else:
        family = SdFamily()
        path = make_tiny_checkpoint("sd15", tmp_path_factory.mktemp("sd15") / "tiny_sd15.safetensors")
    return family, family.load(str(path))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_renders(family_models, sampler):
    """pndm (3 steps), heun, dpm_2, k_dpm_2 (no generator argument), lms, k_lms (scipy) and dpmsolver crashed."""
    family, models = family_models
    image = generate(family, models, SamplePrompt("a red square", width=64, height=64, sample_steps=3, seed=1),
                     sampler)
    pixels = np.asarray(image)
    assert image.size == (64, 64) and pixels.std() > 0


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_kohya_mapping_and_step_arguments(sampler):
    scheduler = make_scheduler(sampler, False, steps=30)
    assert type(scheduler).__name__ == KOHYA_CLASSES[sampler]
    kwargs = step_kwargs(scheduler, torch.Generator())
    takes = set(__import__("inspect").signature(scheduler.step).parameters)
    assert set(kwargs) == {"generator", "eta"} & takes  # each passed only where the scheduler accepts it
    if "eta" in kwargs:
        assert kwargs["eta"] == 0.0


def test_dpmsolver_is_dpm_solver_and_dpmsolverpp_is_dpm_solver_plus_plus():
    assert make_scheduler("dpmsolver", False).config.algorithm_type == "dpmsolver"
    assert make_scheduler("dpmsolver++", False).config.algorithm_type == "dpmsolver++"


def test_all_samplers_through_the_trainer(plain_assets, tmp_path):
    """One prompt per sampler (``--ss``) at the end of the only epoch of a tiny SD1.5 run."""
    from tools.make_tiny_model import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint("sd15", tmp_path / "sd15.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a red square --w 64 --h 64 --s 2 --d 3 --ss {s}\n" for s in SAMPLERS))
    out = tmp_path / "out"
    assert sd_main(["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(plain_assets[1]),
                    "--output_dir", str(out), "--network_module", "networks.lora", "--network_train_unet_only",
                    "--max_train_steps", "1", "--max_data_loader_n_workers", "0", "--resolution", "64",
                    "--sample_prompts", str(prompts), "--sample_every_n_steps", "1", "--output_name", "x"]) == 0
    names = sorted(p.name.split("_")[2] for p in (out / "sample").iterdir())
    assert names == [f"{i:02d}" for i in range(len(SAMPLERS))]


def _failing_sampler(monkeypatch, fail_at_epoch_end: bool = True):
    import sd_train.sampling as sampling

    def broken(trainer, epoch, step):
        if epoch is not None or not fail_at_epoch_end:
            raise RuntimeError("sampler exploded")
        return []

    monkeypatch.setattr(sampling, "sample_during_training", broken)


def test_sampler_failure_at_the_end_keeps_the_lora_and_state(plain_assets, tmp_path, monkeypatch, capsys):
    """kohya (and sd-train before) sampled the last epoch before writing the final LoRA: a crash lost the run."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red square --w 64 --h 64 --s 2\n")
    _failing_sampler(monkeypatch)
    ckpt, toml = plain_assets
    out = tmp_path / "out"
    assert sdxl_main(["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml),
                      "--output_dir", str(out), "--network_module", "networks.lora", "--network_train_unet_only",
                      "--max_train_epochs", "2", "--max_data_loader_n_workers", "0", "--resolution", "64",
                      "--sample_prompts", str(prompts), "--sample_every_n_epochs", "1", "--save_every_n_epochs",
                      "1", "--save_state"]) == 0
    failures = re.findall(r"sampling at .*?training goes on", capsys.readouterr().err)
    assert failures == [f"sampling at epoch {e} failed (RuntimeError: sampler exploded); no samples this time, "
                        "training goes on" for e in (1, 2)]
    assert read_header(out / "last.safetensors")[1]["ss_steps"] == "8"
    assert read_header(out / "epoch-000001.safetensors")[1]["ss_steps"] == "4"
    assert (out / "last-state" / "train_state.json").is_file()


def test_missing_scipy_for_lms_is_refused_before_models_load(plain_assets, tmp_path, monkeypatch, capsys):
    import sys

    import library.checkpoint.io as cio

    monkeypatch.setitem(sys.modules, "scipy", None)  # import scipy now raises ImportError
    monkeypatch.setattr(cio, "load_models", lambda *a, **k: pytest.fail("models were loaded"))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red square --ss k_lms\n")
    ckpt, toml = plain_assets
    code = sdxl_main(["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml),
                      "--output_dir", str(tmp_path / "o"), "--sample_prompts", str(prompts)])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --sample_sampler k_lms: the LMS sampler needs scipy: pip install scipy, or choose another sampler"]

"""library.checkpoint.hub: hub ids for the base model and --vae are fetched into the cache, never guessed."""

from __future__ import annotations

import shutil

import pytest

from library.checkpoint import hub
from library.errors import UserError
from library.io.safetensors_io import read_header
from sd_train.sdxl_train_network import main as sdxl_main


@pytest.mark.parametrize("value, expected", [
    ("stabilityai/stable-diffusion-xl-base-1.0", True),
    ("madebyollin/sdxl-vae-fp16-fix", True),
    ("models/sd_xl_base_1.0.safetensors", False),  # a missing local file stays a file error
    ("sd_xl_base_1.0.safetensors", False),
    ("a/b/c", False),
    ("/abs/path", False),
])
def test_hub_id_shape(value, expected):
    assert hub.is_hub_id(value) is expected


def test_existing_folder_is_never_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "owner" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not hub.is_hub_id("owner/name")
    assert hub.local_path("owner/name", hub.MODEL_FILES) == "owner/name"


def test_failed_fetch_is_one_line(monkeypatch):
    import huggingface_hub

    def offline(repo_id, **kwargs):
        raise OSError("Cannot reach https://huggingface.co: offline mode is enabled.\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UserError) as err:
        hub.local_path("owner/model", hub.MODEL_FILES)
    assert str(err.value) == ("owner/model: not a local file or folder, and fetching it from the Hugging Face Hub "
                              "failed (Cannot reach https://huggingface.co: offline mode is enabled.); pass a local "
                              ".safetensors file or diffusers folder")


def test_repository_without_safetensors_is_one_line(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(tmp_path))
    with pytest.raises(UserError, match="owner/vae: the Hugging Face Hub repository has no diffusers .safetensors"):
        hub.local_path("owner/vae", hub.VAE_FILES)


def test_training_from_a_hub_id_loads_the_snapshot_and_records_the_id(assets, tmp_path, monkeypatch):
    import huggingface_hub

    from library.checkpoint.io import load_models
    from library.checkpoint.diffusers_export import save_diffusers_folder

    ckpt, toml = assets
    snapshot = tmp_path / "snapshot"
    save_diffusers_folder(load_models(ckpt), snapshot)
    shutil.rmtree(snapshot / "tokenizer")  # not fetched: tokenizers are built offline
    calls = []

    def fetch(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fetch)
    out = tmp_path / "out"
    assert sdxl_main(["--pretrained_model_name_or_path", "owner/tiny-sdxl", "--dataset_config", str(toml),
                      "--output_dir", str(out), "--network_module", "networks.lora", "--network_dim", "4",
                      "--max_train_steps", "1", "--max_data_loader_n_workers", "0", "--network_train_unet_only",
                      "--cache_latents"]) == 0
    assert calls == [("owner/tiny-sdxl", {"allow_patterns": hub.MODEL_FILES})]
    meta = read_header(out / "last.safetensors")[1]
    assert meta["ss_sd_model_name"] == "owner/tiny-sdxl" and "ss_sd_model_hash" not in meta

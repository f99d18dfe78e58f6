"""sd_train.metadata: ss_* and modelspec.* key sets and value formatting (FORMAT.md §4-5)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import torch

import sd_train
from library.io.safetensors_io import read_metadata, save_lora_file
from sd_train.metadata import MINIMAL_KEYS, base_model_version, build_metadata, build_modelspec, update_for_save
from sd_train.options import TrainOptions

SD_TRAIN_KEYS = {"sd_train.version"}


def _golden(name: str) -> set[str]:
    for folder in (Path(__file__).resolve().parents[1] / "assets",):
        if (folder / name).is_file():
            return set((folder / name).read_text().split())
    raise FileNotFoundError(name)


def _summary(dataset_config=False):
    bucket_info = {"buckets": {"0": {"resolution": [1024, 1024], "count": 20}}, "mean_img_ar_error": 0.0}
    out = {"num_train_images": 20, "num_validation_images": 0, "num_reg_images": 0, "num_batches_per_epoch": 20,
           "tag_frequency": {"10_sks": {"sks dog": 2, "é": 1}}, "dataset_dirs": {"10_sks": {"n_repeats": 10,
                                                                                             "img_count": 2}}}
    if dataset_config:
        out["datasets"] = [{"is_dreambooth": True, "bucket_info": bucket_info, "subsets": []}]
    else:
        out.update(reg_dataset_dirs={}, bucket_info=bucket_info)
    return out


def _run(network_args=None):
    return {"session_id": 123, "training_started_at": 1700000000.5, "seed": 42, "max_train_steps": 40,
            "num_train_epochs": 2, "num_processes": 1, "optimizer": "torch.optim.adamw.AdamW(weight_decay=0.01)",
            "network_args": network_args}


def _model_info(family="sdxl", v=False, local=True):
    info = {"family": family, "v_parameterization": v, "sd_model_name": "sd_xl_base_1.0.safetensors"}
    if local:
        info.update(sd_model_hash="be9edd61", new_sd_model_hash="31e35c80" * 8)
    return info


def _build(opts, summary=None, run=None, info=None):
    return build_metadata(opts.model, opts.dataset, opts.training, opts.optimizer, opts.network, opts.saving,
                          summary=summary or _summary(), model_info=info or _model_info(), run=run or _run())


def _saved_keys(meta, tmp_path):
    path = tmp_path / "x.safetensors"
    save_lora_file({"lora_unet_a.lora_down.weight": torch.zeros(4, 8)}, path, update_for_save(meta, 40, 2))
    return set(read_metadata(path))


UNET_ONLY = dict(pretrained_model_name_or_path="/m/sd_xl_base_1.0.safetensors", resolution="1024,1024",
                 network_module="networks.lora", network_dim=4, network_train_unet_only=True, learning_rate=1e-4,
                 output_name="sks", optimizer_args=["weight_decay=0.01"])


def test_folder_sdxl_unet_only_key_set_equals_kohya(tmp_path):
    meta = _build(TrainOptions().replace(**UNET_ONLY))
    assert _saved_keys(meta, tmp_path) - SD_TRAIN_KEYS == _golden("kohya_metadata_keys.txt")


def test_conv_te_key_set_equals_kohya(tmp_path):
    opts = TrainOptions().replace(**{**UNET_ONLY, "network_train_unet_only": False,
                                     "network_args": ["conv_dim=4", "conv_alpha=1"]})
    meta = _build(opts, run=_run({"conv_dim": "4", "conv_alpha": "1", "dropout": None}))
    assert _saved_keys(meta, tmp_path) - SD_TRAIN_KEYS == _golden("kohya_metadata_keys_conv_te.txt")
    assert meta["ss_network_args"] == '{"conv_dim": "4", "conv_alpha": "1", "dropout": null}'


def test_value_formatting():
    opts = TrainOptions().replace(**{**UNET_ONLY, "text_encoder_lr": [5e-5, 1e-5], "lr_warmup_steps": 0.05,
                                     "lr_scheduler": "cosine", "network_alpha": 16.0})
    meta = _build(opts)
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["ss_learning_rate"] == "0.0001" and meta["ss_text_encoder_lr"] == "5e-05"
    assert meta["ss_unet_lr"] == "None" and meta["ss_network_alpha"] == "16.0" and meta["ss_network_dim"] == "4"
    assert meta["ss_lr_warmup_steps"] == "0.05" and meta["ss_v2"] == "False"
    assert meta["ss_resolution"] == "(1024, 1024)" and meta["ss_total_batch_size"] == "1"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["ss_sd_scripts_commit_hash"] == "(unknown)"
    assert meta["ss_tag_frequency"] == '{"10_sks": {"sks dog": 2, "\\u00e9": 1}}'
    assert json.loads(meta["ss_bucket_info"])["buckets"]["0"]["count"] == 20
    assert meta["ss_optimizer"] == "torch.optim.adamw.AdamW(weight_decay=0.01)"
    assert meta["ss_training_started_at"] == "1700000000.5" and meta["ss_seed"] == "42"
    assert meta["sd_train.version"] == sd_train.__version__


def test_dataset_config_variant():
    opts = TrainOptions().replace(**{**UNET_ONLY, "dataset_config": "ds.toml"})
    meta = _build(opts, summary=_summary(dataset_config=True), info=_model_info(local=False))
    assert json.loads(meta["ss_datasets"])[0]["is_dreambooth"] is True
    assert "ss_bucket_info" not in meta and "ss_resolution" not in meta and "ss_batch_size_per_device" not in meta
    assert "ss_sd_model_hash" not in meta and meta["ss_sd_model_name"] == "sd_xl_base_1.0.safetensors"
    assert "ss_tag_frequency" in meta and "ss_dataset_dirs" in meta


def test_no_metadata_subset():
    opts = TrainOptions().replace(**{**UNET_ONLY, "no_metadata": True, "network_args": ["conv_dim=4"]})
    meta = update_for_save(_build(opts, run=_run({"conv_dim": "4", "dropout": None})), 10, 1)
    ss_keys = {k for k in meta if k.startswith("ss_")}
    assert ss_keys == set(MINIMAL_KEYS)
    assert {k for k in meta if not k.startswith("ss_")} == {
        "modelspec.sai_model_spec", "modelspec.architecture", "modelspec.implementation", "modelspec.title",
        "modelspec.resolution", "modelspec.prediction_type", "modelspec.implementation_version",
        "modelspec.date", "sd_train.version"}


def test_update_for_save():
    meta = _build(TrainOptions().replace(**UNET_ONLY))
    saved = update_for_save(meta, 40, 2, now=1700000100.25)
    assert saved["ss_steps"] == "40" and saved["ss_epoch"] == "2"
    assert saved["ss_training_finished_at"] == "1700000100.25"
    assert saved["modelspec.date"] == datetime.datetime.fromtimestamp(1700000100).isoformat()
    assert "ss_steps" not in meta


@pytest.mark.parametrize("family, v, arch, impl, reso, version", [
    ("sd1", False, "stable-diffusion-v1/lora", "diffusers", "512x512", "sd_v1"),
    ("sd2", False, "stable-diffusion-v2-512/lora", "diffusers", "512x512", "sd_v2"),
    ("sd2", True, "stable-diffusion-v2-768-v/lora", "diffusers", "768x768", "sd_v2_v"),
    ("sdxl", True, "stable-diffusion-xl-v1-base/lora", "https://github.com/Stability-AI/generative-models",
     "1024x1024", "sdxl_base_v1-0"),
])
def test_modelspec_per_family(family, v, arch, impl, reso, version):
    opts = TrainOptions().replace(v_parameterization=v, v2=family == "sd2")
    spec = build_modelspec(opts.model, opts.dataset, opts.training, opts.saving, family=family,
                           training_started_at=1700000000.5)
    assert spec["modelspec.architecture"] == arch and spec["modelspec.implementation"] == impl
    assert spec["modelspec.resolution"] == reso and spec["modelspec.title"] == "LoRA@1700000000.5"
    assert spec["modelspec.prediction_type"] == ("v" if v else "epsilon")
    assert spec["modelspec.implementation_version"] == f"sd-train/{sd_train.__version__}"
    assert base_model_version(family, v) == version


def test_modelspec_optional_fields(tmp_path):
    thumb = tmp_path / "t.png"
    thumb.write_bytes(b"\x89PNG")
    opts = TrainOptions().replace(resolution="1024,768", output_name="o", metadata_author="me", min_timestep=100,
                                  clip_skip=2, metadata_thumbnail=str(thumb), metadata_tags="a,b")
    spec = build_modelspec(opts.model, opts.dataset, opts.training, opts.saving, family="sd1",
                           training_started_at=1.0)
    assert spec["modelspec.resolution"] == "1024x768" and spec["modelspec.title"] == "o"
    assert spec["modelspec.timestep_range"] == "100,1000" and spec["modelspec.encoder_layer"] == "2"
    assert spec["modelspec.author"] == "me" and spec["modelspec.tags"] == "a,b"
    assert spec["modelspec.thumbnail"] == "data:image/png;base64,iVBORw=="
    missing = TrainOptions().replace(metadata_thumbnail=str(tmp_path / "none.png"))
    spec = build_modelspec(missing.model, missing.dataset, missing.training, missing.saving, family="sd1",
                           training_started_at=1.0)
    assert "modelspec.thumbnail" not in spec


def test_model_info_keeps_hub_ids_and_hashes_local_files(tmp_path):
    from library.io.safetensors_io import file_model_hashes
    from sd_train.families.sdxl import SdxlFamily

    vae = tmp_path / "vae.safetensors"
    vae.write_bytes(bytes(range(256)) * 5000)
    old, new = file_model_hashes(vae)
    info = SdxlFamily().model_info("stabilityai/stable-diffusion-xl-base-1.0", str(vae))
    assert info == {"family": "sdxl", "v_parameterization": False,
                    "sd_model_name": "stabilityai/stable-diffusion-xl-base-1.0",
                    "vae_name": "vae.safetensors", "vae_hash": old, "new_vae_hash": new}
    assert SdxlFamily().model_info("madebyollin/x") == {"family": "sdxl", "v_parameterization": False,
                                                       "sd_model_name": "madebyollin/x"}

"""Checkpoint I/O: full-size key layouts, family detection, strictness and safety (FORMAT.md §10–11)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from library.checkpoint import convert as cc
from library.checkpoint.io import build_models, default_configs, detect_family, load_models, save_models
from library.errors import UserError
from library.io.safetensors_io import load_file

SPEC_DATA = Path(__file__).resolve().parents[1] / "assets"


def _manifest(name: str) -> dict[str, tuple[int, ...]]:
    rows = [line.split("\t") for line in (SPEC_DATA / name).read_text().splitlines()]
    return {k: tuple(int(s) for s in shape.split("x")) if shape else () for k, _, shape in rows}


@pytest.mark.parametrize("family,manifest", [("sdxl", "sdxl_base_ldm_keys.tsv"), ("sd1", "sd15_ldm_keys.tsv"),
                                             ("sd2", "sd2_ldm_keys.tsv")])
def test_full_size_single_file_layout_matches_manifest(family, manifest):
    configs = default_configs(family)
    mods = build_models(family, configs)
    states = {name: m.state_dict() for name, m in mods.items()}
    layers = {f"te{i}": c.num_hidden_layers for i, c in enumerate(configs["text_encoders"])}
    sd = cc.to_single_file(family, states, {}, layers)
    assert {k: tuple(v.shape) for k, v in sd.items()} == _manifest(manifest)


@pytest.mark.parametrize("manifest,family", [("sdxl_base_ldm_keys.tsv", "sdxl"), ("sd15_ldm_keys.tsv", "sd1"),
                                             ("sd2_ldm_keys.tsv", "sd2")])
def test_detect_family_on_manifests(manifest, family):
    assert detect_family(_manifest(manifest)) == family


def test_detect_family_rejects_non_checkpoints():
    with pytest.raises(UserError, match="no SD1/SD2/SDXL text-encoder keys"):
        detect_family(["lora_unet_x.lora_down.weight"])


@pytest.mark.parametrize("fixture,kwargs,message", [
    ("tiny_sdxl_ckpt", {"expected_family": "sd"}, "this checkpoint is SDXL; use sdxl_train_network.py"),
    ("tiny_sd15_ckpt", {"expected_family": "sdxl"}, "this checkpoint is SD1.x/SD2.x; use train_network.py"),
    ("tiny_sd2_ckpt", {"expected_family": "sdxl"}, "this checkpoint is SD1.x/SD2.x; use train_network.py"),
    ("tiny_sd2_ckpt", {"expected_family": "sd"}, "this checkpoint is SD2.x; add --v2"),
    ("tiny_sd15_ckpt", {"expected_family": "sd", "v2": True}, "this checkpoint is SD1.x; remove --v2"),
    ("tiny_sdxl_ckpt", {"expected_family": "sd", "script_attr": "ti_script"},
     "this checkpoint is SDXL; use sdxl_train_textual_inversion.py"),
    ("tiny_sd2_ckpt", {"expected_family": "sd", "script_attr": "ti_script"}, "this checkpoint is SD2.x; add --v2"),
])
def test_wrong_family_names_the_right_script(request, fixture, kwargs, message):
    path = request.getfixturevalue(fixture)
    with pytest.raises(UserError) as exc:
        load_models(path, **kwargs)
    assert str(exc.value) == f"{path}: {message}"


def test_truncated_safetensors_is_one_user_error(tiny_sd15_ckpt, tmp_path):
    data = tiny_sd15_ckpt.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated safetensors file"):
        load_models(bad)


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_legacy_format_ckpt_is_read(tmp_path):
    from library.checkpoint.io import open_tensors

    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {"betas": torch.zeros(3)}, "epoch": 1}, path, _use_new_zipfile_serialization=False)
    keys, _, items = open_tensors(path)
    assert keys == ["betas"] and torch.equal(dict(items)["betas"], torch.zeros(3))


def test_malicious_ckpt_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Evil(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(UserError) as exc:
        load_models(path)
    assert str(exc.value) == (f"{path}: this .ckpt needs pickled code to load; refusing "
                              "(convert it to .safetensors with a trusted tool)")
    assert not marker.exists()


def _harmless_extras():
    return {"betas": torch.zeros(4), "alphas_cumprod": torch.zeros(4), "model_ema.decay": torch.tensor(0.9),
            "model_ema.diffusion_modelinput_blocks00weight": torch.zeros(1),
            "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None]}


def test_nested_ckpt_is_read_with_weights_only(tiny_sd15_ckpt, tmp_path):
    from library.checkpoint.io import collect_states, configs_from_json, open_tensors

    tensors, meta = load_file(tiny_sd15_ckpt)
    path = tmp_path / "nested.ckpt"
    torch.save({"state_dict": {**tensors, **_harmless_extras()}, "epoch": 3, "global_step": 7}, path)
    keys, metadata, items = open_tensors(path)
    assert set(keys) == set(tensors) | set(_harmless_extras()) and metadata == {}
    configs = configs_from_json(meta[cc.CONFIG_METADATA_KEY], "x")
    states, extras, unknown = collect_states("sd1", items, configs, torch.float32, "cpu", str(path))
    assert unknown == [] and extras == {}
    assert sum(map(len, states.values())) == len(tensors)


def test_harmless_extras_are_tolerated(tiny_sd15_ckpt, tmp_path):
    tensors, meta = load_file(tiny_sd15_ckpt)
    path = tmp_path / "extras.safetensors"
    save_file({**tensors, **_harmless_extras()}, str(path), metadata=meta)
    loaded = load_models(path)
    assert loaded.family == "sd1" and loaded.extras == {}
    assert torch.equal(loaded.unet.conv_in.weight, tensors["model.diffusion_model.input_blocks.0.0.weight"])


def test_unexpected_and_missing_unet_keys_are_errors(tiny_sd15_ckpt, tmp_path):
    tensors, meta = load_file(tiny_sd15_ckpt)
    odd = tmp_path / "odd.safetensors"
    save_file({**tensors, "model.diffusion_model.bogus.weight": torch.zeros(1)}, str(odd), metadata=meta)
    with pytest.raises(UserError, match=r"1 unexpected UNet keys \(model.diffusion_model.bogus.weight\)"):
        load_models(odd)
    gone = "model.diffusion_model.out.2.weight"
    short = tmp_path / "short.safetensors"
    save_file({k: v for k, v in tensors.items() if k != gone}, str(short), metadata=meta)
    with pytest.raises(UserError, match=r"unet weights do not fit the model: 1 missing \(conv_out.weight\)"):
        load_models(short)


@pytest.mark.parametrize("prefix,diffusers_names", [("first_stage_model.", False), ("", False), ("", True)])
def test_separate_vae_file(tiny_sd15_ckpt, tmp_path, prefix, diffusers_names):
    base = load_models(tiny_sd15_ckpt)
    vae_sd = {k: torch.full_like(v, 0.5) for k, v in base.vae.state_dict().items()}
    if not diffusers_names:
        vae_sd = cc.keymaps.vae_diffusers_to_ldm(vae_sd)
    path = tmp_path / "vae.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in vae_sd.items()}, str(path))
    loaded = load_models(tiny_sd15_ckpt, vae_path=path)
    assert all(torch.all(p == 0.5) for p in loaded.vae.parameters())
    assert torch.equal(loaded.unet.conv_in.weight, base.unet.conv_in.weight)


def test_save_as_ckpt_nests_state_dict(tiny_sdxl_ckpt, tmp_path):
    models = load_models(tiny_sdxl_ckpt)
    path = tmp_path / "m.ckpt"
    save_models(models, path)
    raw = torch.load(path, weights_only=True)["state_dict"]
    tensors, _ = load_file(tiny_sdxl_ckpt)
    assert raw.keys() == tensors.keys() and all(torch.equal(raw[k], tensors[k]) for k in tensors)


def test_old_sd1_text_encoder_without_text_model_level(tiny_sd15_ckpt, tmp_path):
    tensors, meta = load_file(tiny_sd15_ckpt)
    old = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
           for k, v in tensors.items()}
    assert "cond_stage_model.transformer.final_layer_norm.weight" in old
    path = tmp_path / "old.safetensors"
    save_file(old, str(path), metadata=meta)
    te = load_models(path).text_encoders[0]
    assert torch.equal(te.text_model.final_layer_norm.weight,
                       tensors["cond_stage_model.transformer.text_model.final_layer_norm.weight"])


def test_load_without_mmap_gives_the_same_weights(tiny_sdxl_ckpt):
    from library.checkpoint.io import load_models

    a = load_models(tiny_sdxl_ckpt, expected_family="sdxl")
    b = load_models(tiny_sdxl_ckpt, expected_family="sdxl", mmap=False)
    for ma, mb in [(a.unet, b.unet), (a.vae, b.vae), *zip(a.text_encoders, b.text_encoders)]:
        sa, sb = ma.state_dict(), mb.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("load_dtypes, mapped", [({torch.float16}, True), ({torch.float16, torch.float32}, True),
                                                ({torch.float32}, False), ({torch.bfloat16}, False)])
def test_file_is_mapped_only_when_no_tensor_needs_a_cast(tmp_path, monkeypatch, load_dtypes, mapped):
    import library.checkpoint.io as cio

    path = tmp_path / "half.safetensors"
    tensors = {"w": torch.randn(4, 3).half(), "ids": torch.arange(3)}
    save_file(tensors, str(path))
    reads = []
    real = cio.read_tensors
    monkeypatch.setattr(cio, "read_tensors", lambda p, **kw: reads.append((p, kw)) or real(p, **kw))
    _, _, items = cio.open_tensors(path, load_dtypes=load_dtypes)
    got = {k: v.clone() for k, v in items}  # read tensors share one buffer: copy each before the next
    assert reads == ([] if mapped else [(path, {"reuse_buffer": True})])
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)


@pytest.mark.parametrize("mmap", [True, False])
def test_unet_loads_straight_in_its_own_dtype(tiny_sdxl_ckpt, mmap):
    full = load_models(tiny_sdxl_ckpt)
    mixed = load_models(tiny_sdxl_ckpt, unet_dtype=torch.bfloat16, mmap=mmap)
    assert {p.dtype for p in mixed.unet.parameters()} == {torch.bfloat16}
    for module in (*mixed.text_encoders, mixed.vae):
        assert {p.dtype for p in module.parameters()} == {torch.float32}
    want = {k: v.to(torch.bfloat16) for k, v in full.unet.state_dict().items()}  # same as casting after loading
    got = mixed.unet.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_half_file_loaded_in_fp32_through_the_shared_read_buffer(tiny_sdxl_ckpt, tmp_path):
    half = tmp_path / "half.safetensors"
    save_models(load_models(tiny_sdxl_ckpt), half, dtype=torch.float16)
    mapped = load_models(half, dtype=torch.float16)  # no cast: memory-mapped, then cast here for reference
    read = load_models(half)  # fp16 file -> fp32: read tensor by tensor through one reused buffer
    for a, b in [(mapped.unet, read.unet), (mapped.vae, read.vae), *zip(mapped.text_encoders, read.text_encoders)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(sb[k].dtype == torch.float32 and torch.equal(sa[k].float(), sb[k]) for k in sa)
    assert len({t.data_ptr() for t in read.unet.state_dict().values()}) == len(read.unet.state_dict())


def test_read_tensors_with_a_reused_buffer_must_be_copied_in_turn(tmp_path):
    from library.io.safetensors_io import read_tensors

    path = tmp_path / "r.safetensors"
    tensors = {"a": torch.randn(600, 512), "b": torch.arange(7), "c": torch.randn(3).half()}
    save_file(tensors, str(path))
    got = {k: v.clone() for k, v in read_tensors(path, reuse_buffer=True)}
    assert all(got[k].dtype == tensors[k].dtype and torch.equal(got[k], tensors[k]) for k in tensors)

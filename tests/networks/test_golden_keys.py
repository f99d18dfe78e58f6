"""networks.lora key names, dtypes and shapes on full-size meta models vs the golden kohya lists."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import pytest
import torch

import networks.lora as L

DATA = Path(__file__).parent / "data"  # gzipped copies of spec/data/lora_keys_*.tsv (kohya 48d368f)


def golden(name: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``key -> (dtype, shape)`` from ``lora_keys_<name>.tsv``."""
    out = {}
    for line in gzip.decompress((DATA / f"lora_keys_{name}.tsv.gz").read_bytes()).decode().splitlines():
        key, dtype, shape = line.split("\t")
        out[key] = (dtype, tuple(int(s) for s in shape.split("x")) if shape else ())
    return out


@functools.lru_cache(maxsize=None)
def meta_models(family: str):
    from library.models.text_encoders import CLIPTextModel, CLIPTextModelWithProjection, ClipTextConfig

    with torch.device("meta"):
        if family == "sdxl":
            from library.models.sdxl_unet import SdxlUNet, SdxlUNetConfig

            return [CLIPTextModel(ClipTextConfig.clip_l()),
                    CLIPTextModelWithProjection(ClipTextConfig.openclip_bigg())], SdxlUNet(SdxlUNetConfig.full())
        from library.models.sd_unet import build_sd_unet, sd_unet_config

        te = CLIPTextModel(ClipTextConfig.clip_l() if family == "sd15" else ClipTextConfig.openclip_h())
        return te, build_sd_unet(sd_unet_config("sd1" if family == "sd15" else "sd2"))


def network_keys(family: str, apply_te: bool = True, **args):
    tes, unet = meta_models(family)
    net = L.create_network(1.0, 4, 1, None, tes, unet, **args)
    net.apply_to(tes, unet, apply_te, True)
    try:
        return {k: ("F32" if v.dtype == torch.float32 else str(v.dtype), tuple(v.shape))
                for k, v in net.state_dict().items()}, net
    finally:
        net.restore()


@pytest.mark.parametrize("family,golden_name,args,counts", [
    ("sdxl", "sdxl", {}, (264, 722)),
    ("sdxl", "sdxl_conv", {"conv_dim": "4", "conv_alpha": "1"}, (264, 788)),
    ("sd15", "sd15", {}, (72, 192)),
    ("sd15", "sd15_conv", {"conv_dim": "4", "conv_alpha": "1"}, (72, 278)),
    ("sd2", "sd2", {}, (138, 192)),
])
def test_keys_match_kohya(family, golden_name, args, counts):
    keys, net = network_keys(family, **args)
    assert (len(net.text_encoder_loras), len(net.unet_loras)) == counts
    want = golden(golden_name)
    assert sorted(set(want) - set(keys))[:5] == [] and sorted(set(keys) - set(want))[:5] == []
    assert keys == want


def test_sdxl_unet_only_keys():
    keys, _ = network_keys("sdxl", apply_te=False)
    assert keys == golden("sdxl_unet")


def test_te_module_order_is_k_v_q_out_fc1_fc2():
    _, net = network_keys("sdxl")
    names = [m.lora_name for m in net.text_encoder_loras]
    assert names[:6] == [f"lora_te1_text_model_encoder_layers_0_{s}" for s in
                         ("self_attn_k_proj", "self_attn_v_proj", "self_attn_q_proj", "self_attn_out_proj",
                          "mlp_fc1", "mlp_fc2")]
    assert names[-1] == "lora_te2_text_model_encoder_layers_31_mlp_fc2"


def test_parameters_per_unit_rank():
    _, net = network_keys("sdxl")
    per_rank = {p: sum(m.lora_down.weight.shape[1] + m.lora_up.weight.shape[0] for m in mods)
                for p, mods in (("unet", net.unet_loras), ("te1", net.text_encoder_loras[:72]),
                                ("te2", net.text_encoder_loras[72:]))}
    assert per_rank == {"unet": 2_659_840, "te1": 165_888, "te2": 737_280}

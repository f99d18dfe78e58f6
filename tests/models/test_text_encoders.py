"""CLIP text encoders: 4.x layout, checkpoint keys, numerics vs transformers (NETWORKS.md §1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from library.models.text_encoders import (
    ClipTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
)

SPEC_DATA = Path(__file__).resolve().parents[1] / "assets"
TE1_PREFIX = "conditioner.embedders.0.transformer."


def _manifest_te1() -> dict[str, tuple[int, ...]]:
    rows = {}
    for line in (SPEC_DATA / "sdxl_base_ldm_keys.tsv").read_text().splitlines():
        key, _dtype, shape = line.split("\t")
        if key.startswith(TE1_PREFIX + "text_model."):
            rows[key[len(TE1_PREFIX):]] = tuple(int(s) for s in shape.split("x")) if shape else ()
    return rows


def _random_ids(batch: int, eos_at: list[int], pad: int) -> torch.Tensor:
    ids = torch.randint(1, 49000, (batch, 77))
    for row, pos in enumerate(eos_at):
        ids[row, 0] = 49406
        ids[row, pos] = 49407
        ids[row, pos + 1:] = pad
    return ids


def test_clip_l_state_dict_matches_sdxl_manifest():
    expected = _manifest_te1()
    with torch.device("meta"):
        model = CLIPTextModel(ClipTextConfig.clip_l())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(ours) == 196
    assert set(expected) - set(ours) <= {"text_model.embeddings.position_ids"}
    assert set(ours) - set(expected) == set()
    assert all(ours[k] == expected[k] for k in ours)


@pytest.mark.parametrize("factory,layers,width,proj", [
    (ClipTextConfig.openclip_h, 23, 1024, None),
    (ClipTextConfig.openclip_bigg, 32, 1280, 1280),
])
def test_openclip_configs_build_on_meta(factory, layers, width, proj):
    config = factory()
    cls = CLIPTextModelWithProjection if proj else CLIPTextModel
    with torch.device("meta"):
        model = cls(config)
    sd = model.state_dict()
    assert len(sd) == 2 + 16 * layers + 2 + (1 if proj else 0)
    assert sd[f"text_model.encoder.layers.{layers - 1}.mlp.fc1.weight"].shape == (4 * width, width)
    assert sd["text_model.final_layer_norm.weight"].shape == (width,)
    if proj:
        assert sd["text_projection.weight"].shape == (proj, width)
    assert config.hidden_act == "gelu"
    assert ClipTextConfig.from_dict(config.to_dict()) == config


def test_module_paths_class_names_and_order():
    model = CLIPTextModelWithProjection(ClipTextConfig.tiny(projection_dim=16))
    modules = dict(model.named_modules())
    for path in ["text_model.embeddings.token_embedding",
                 "text_model.embeddings.position_embedding",
                 "text_model.encoder.layers.0.self_attn.q_proj",
                 "text_model.encoder.layers.2.mlp.fc2",
                 "text_model.encoder.layers.0.layer_norm1", "text_model.final_layer_norm",
                 "text_projection"]:
        assert path in modules, path
    assert type(modules["text_model.encoder.layers.0.self_attn"]).__name__ == "CLIPAttention"
    assert type(modules["text_model.encoder.layers.0.mlp"]).__name__ == "CLIPMLP"
    linears = [n for n, m in model.named_modules() if type(m).__name__ == "Linear"]
    layer0 = [n.rsplit(".", 1)[-1] for n in linears if n.startswith("text_model.encoder.layers.0.")]
    assert layer0 == ["k_proj", "v_proj", "q_proj", "out_proj", "fc1", "fc2"]
    assert len(linears) == 3 * 6 + 1 and linears[-1] == "text_projection"
    assert "text_model.embeddings.position_ids" not in model.state_dict()
    assert model.state_dict()["text_projection.weight"].shape == (16, 32)
    with pytest.raises(ValueError, match="projection_dim"):
        CLIPTextModelWithProjection(ClipTextConfig.tiny())


def _transformers_pair(ours: CLIPTextModel, hidden_act: str):
    from transformers import CLIPTextConfig as HfConfig
    from transformers import CLIPTextModel as HfModel

    c = ours.config
    hf_config = HfConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                         intermediate_size=c.intermediate_size,
                         num_hidden_layers=c.num_hidden_layers,
                         num_attention_heads=c.num_attention_heads,
                         max_position_embeddings=c.max_position_embeddings, hidden_act=hidden_act,
                         layer_norm_eps=c.layer_norm_eps, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=1)
    hf = HfModel(hf_config).eval()
    hf_keys = set(hf.state_dict())
    mapped = {}
    for key, value in ours.state_dict().items():
        bare = key.removeprefix("text_model.")
        mapped[bare if bare in hf_keys else key] = value
    missing, unexpected = hf.load_state_dict(mapped, strict=False)
    assert unexpected == [] and set(missing) <= {"embeddings.position_ids",
                                                 "text_model.embeddings.position_ids"}
    return hf


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_numerics_match_transformers(hidden_act):
    ours = CLIPTextModel(ClipTextConfig.tiny(hidden_act=hidden_act)).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf = _transformers_pair(ours, hidden_act)
    ids = _random_ids(2, eos_at=[5, 60], pad=49407)
    with torch.no_grad():
        mine = ours(ids, output_hidden_states=True)
        ref = hf(input_ids=ids, output_hidden_states=True)
    assert len(mine.hidden_states) == len(ref.hidden_states) == 4
    torch.testing.assert_close(mine.last_hidden_state, ref.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.hidden_states[-2], ref.hidden_states[-2], atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.hidden_states[0], ref.hidden_states[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.pooled_output, ref.pooler_output, atol=1e-5, rtol=0)


def test_pooled_at_first_eos_and_projection():
    model = CLIPTextModelWithProjection(ClipTextConfig.tiny(projection_dim=16)).eval()
    ids = _random_ids(2, eos_at=[4, 30], pad=0)
    ids[1, 50] = 49407  # a second EOS later in the row must not be used
    with torch.no_grad():
        out = model(ids)
    assert out.hidden_states is None
    assert out.last_hidden_state.shape == (2, 77, 32) and out.pooled_output.shape == (2, 32)
    torch.testing.assert_close(out.pooled_output[0], out.last_hidden_state[0, 4])
    torch.testing.assert_close(out.pooled_output[1], out.last_hidden_state[1, 30])
    torch.testing.assert_close(out.text_embeds, out.pooled_output @ model.text_projection.weight.T)


def test_hidden_states_are_layer_outputs_without_final_norm():
    model = CLIPTextModel(ClipTextConfig.tiny()).eval()
    ids = _random_ids(1, eos_at=[10], pad=49407)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        manual = model.text_model.final_layer_norm(out.hidden_states[-1])
        emb = model.text_model.embeddings(ids)
    torch.testing.assert_close(out.last_hidden_state, manual)
    torch.testing.assert_close(out.hidden_states[0], emb)
    # causal: changing a later token leaves earlier positions untouched
    ids2 = ids.clone()
    ids2[0, 20] = 1234
    with torch.no_grad():
        out2 = model(ids2, output_hidden_states=True)
    torch.testing.assert_close(out2.last_hidden_state[0, :20], out.last_hidden_state[0, :20])
    assert not torch.allclose(out2.last_hidden_state[0, 20], out.last_hidden_state[0, 20])


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(1)
    model = CLIPTextModel(ClipTextConfig.tiny())
    ids = _random_ids(2, eos_at=[6, 9], pad=49407)

    def grads():
        model.zero_grad()
        model(ids, output_hidden_states=True).hidden_states[-2].square().mean().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    model.train()
    plain = grads()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    ckpt = grads()
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    assert len(plain) == len(ckpt) > 0
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b)

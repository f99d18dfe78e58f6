"""Family strategy objects: chunking, text paths, size embedding, names (TRAINING.md §3)."""

from __future__ import annotations

import math

import pytest
import torch

from library.models.text_encoders import ClipTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from library.text.conditioning import chunk_token_ids, join_chunk_states
from sd_train.families.sd import SdFamily
from sd_train.families.sdxl import SdxlFamily, size_embedding, size_values


def test_chunking_pad_eos_and_pad_zero():
    body = list(range(1, 81))  # 80 real tokens
    ids = torch.tensor([[49406] + body + [49407] + [0] * 70])  # length 152, pad 0
    chunks = chunk_token_ids(ids, eos_id=49407, pad_id=0)
    assert chunks.shape == (1, 2, 77)
    assert chunks[0, 0, 0] == 49406 and chunks[0, 0, 1:76].tolist() == body[:75]
    assert chunks[0, 0, 76] == 49407  # real token at 76th → EOS last
    assert chunks[0, 1, 1:6].tolist() == body[75:] and chunks[0, 1, 6] == 49407
    assert chunks[0, 1, 76] == 0
    empty = torch.tensor([[49406, 49407] + [0] * 150])
    assert chunk_token_ids(empty, 49407, 0)[0, 1, 1] == 49407  # chunk starting with PAD
    assert chunk_token_ids(torch.zeros(2, 77, dtype=torch.long), 1, 1).shape == (2, 1, 77)


def test_join_chunk_states_lengths():
    states = torch.arange(2 * 3 * 77, dtype=torch.float32).reshape(6, 77, 1)
    out = join_chunk_states(states, 2)
    assert out.shape == (2, 227, 1)
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 1 and out[0, 76, 0] == 78 and out[0, -1, 0] == 230
    assert join_chunk_states(states[:2], 2).shape == (2, 77, 1)


def test_size_embedding_formula():
    vals = torch.tensor([[1024, 768, 0, 16, 1024, 1024]])
    emb = size_embedding(vals, 256)
    assert emb.shape == (1, 1536)
    f5 = math.exp(-math.log(10000) * 5 / 128)
    assert emb[0, 256 + 5].item() == pytest.approx(math.cos(768 * f5), abs=1e-4)
    assert emb[0, 256 + 128 + 5].item() == pytest.approx(math.sin(768 * f5), abs=1e-4)
    assert emb[0, 512].item() == 1.0 and emb[0, 512 + 128].item() == 0.0


def test_size_values_order_and_defaults():
    batch = {"original_sizes_hw": torch.tensor([[10, 20]]), "crop_top_lefts": torch.tensor([[1, 2]]),
             "target_sizes_hw": torch.tensor([[30, 40]])}
    assert size_values(batch, 1).tolist() == [[10, 20, 1, 2, 30, 40]]
    lat = {"latents": torch.zeros(1, 4, 8, 6)}
    assert size_values(lat, 1).tolist() == [[64, 48, 0, 0, 64, 48]]


def _tes():
    torch.manual_seed(0)
    te1 = CLIPTextModel(ClipTextConfig.tiny()).eval()
    te2 = CLIPTextModelWithProjection(ClipTextConfig.tiny(projection_dim=32)).eval()
    return te1, te2


def test_sdxl_encode_shapes_and_layers():
    fam = SdxlFamily(max_token_length=150)
    te1, te2 = _tes()
    tokens = fam.tokenize(["a photo of a cat", "a dog"])
    assert [t.shape for t in tokens] == [(2, 2, 77), (2, 2, 77)]
    assert tokens[1][0, 0, 7] == 0 and tokens[0][0, 0, 7] == 49407  # TE2 pads with 0
    with torch.no_grad():
        conds = fam.encode([te1, te2], tokens)
        ref2 = te2(tokens[1][:, 0], output_hidden_states=True)
        ref1 = te1(tokens[0][:, 0], output_hidden_states=True)
    assert conds.context.shape == (2, 152, 64) and conds.pooled.shape == (2, 32)
    assert torch.allclose(conds.pooled, ref2.text_embeds, atol=1e-6)
    assert torch.allclose(conds.context[:, :76, :32], ref1.hidden_states[-2][:, :76], atol=1e-6)
    assert torch.allclose(conds.context[:, :76, 32:], ref2.hidden_states[-2][:, :76], atol=1e-6)


def test_sd_encode_clip_skip():
    te, _ = _tes()
    tokens = SdFamily().tokenize(["a cat"])
    assert tokens[0].shape == (1, 1, 77)
    with torch.no_grad():
        plain = SdFamily().encode([te], tokens).context
        skip = SdFamily(clip_skip=2).encode([te], tokens).context
        ref = te(tokens[0][:, 0], output_hidden_states=True)
    assert torch.allclose(plain, ref.last_hidden_state)
    assert torch.allclose(skip, te.text_model.final_layer_norm(ref.hidden_states[-2]))


def test_names_and_constants():
    assert SdxlFamily().base_model_version() == "sdxl_base_v1-0"
    assert SdxlFamily().latent_scale == 0.13025 and SdxlFamily().bucket_step_multiple == 32
    assert SdFamily().latent_scale == 0.18215 and SdFamily().bucket_step_multiple == 64
    assert SdFamily().base_model_version() == "sd_v1"
    assert SdFamily(v2=True, v_parameterization=True).base_model_version() == "sd_v2_v"
    assert SdFamily(v2=True).modelspec_architecture(True) == "stable-diffusion-v2-768-v/lora"
    assert SdFamily(v2=True).name == "sd2" and SdxlFamily().name == "sdxl"
    assert SdxlFamily().modelspec_architecture(False) == "stable-diffusion-xl-v1-base/lora"


def test_sdxl_ignores_clip_skip_with_warning(caplog):
    with caplog.at_level("WARNING"):
        fam = SdxlFamily(clip_skip=2)
    assert "--clip_skip is ignored for SDXL" in caplog.text
    te1, te2 = _tes()
    tokens = fam.tokenize(["a cat"])
    with torch.no_grad():
        assert torch.equal(fam.encode([te1, te2], tokens).context, SdxlFamily().encode([te1, te2], tokens).context)


def test_tokenizer_cache_dir_uses_kohya_folders(tmp_path, caplog):
    import json

    from library.text.tokenizer import ClipTokenizer, builtin_vocabulary
    from library.text.conditioning import load_tokenizer

    vocab, merges = builtin_vocabulary()
    folder = tmp_path / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges[:-1]),
                                       encoding="utf-8")  # one merge fewer: a different vocabulary
    tok = load_tokenizer("openclip_bigg", str(tmp_path))
    assert tok.pad_token_id == 0 and len(tok.merges) == len(merges) - 1
    assert "differs from the built-in CLIP vocabulary" in caplog.text
    assert load_tokenizer("clip_l", str(tmp_path)).same_vocabulary(ClipTokenizer.clip_l())

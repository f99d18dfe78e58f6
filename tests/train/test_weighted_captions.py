"""--weighted_captions: A1111 attention parsing, per-token weights, chunking and the weighted text paths
(TRAINING.md §3.1-3.3)."""

from __future__ import annotations

import pytest
import torch

from library.errors import UserError
from library.models.text_encoders import ClipTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from library.text.tokenizer import ClipTokenizer
from library.text.prompt_weights import (apply_token_weights, chunk_token_weights, join_chunk_weights,
                                    parse_prompt_attention, tokenize_chunks_weighted, tokenize_weighted)
from library.text.conditioning import chunk_token_ids
from sd_train.families.base import family_kwargs
from sd_train.families.sd import SdFamily
from sd_train.families.sdxl import SdxlFamily

BOS, EOS = 49406, 49407
DOWN = 1 / 1.1


@pytest.mark.parametrize("text, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("((a))", [("a", 1.1 * 1.1)]),
    ("[a] b", [("a", DOWN), (" b", 1.0)]),
    ("[[a]]", [("a", DOWN * DOWN)]),
    ("(x:0.5)", [("x", 0.5)]),
    ("(x:+2) (y:-1) (z:.25)", [("x", 2.0), (" ", 1.0), ("y", -1.0), (" ", 1.0), ("z", 0.25)]),
    ("(a (b:1.5))", [("a ", 1.1), ("b", 1.5 * 1.1)]),
    ("[a (b)]", [("a ", DOWN), ("b", 1.1 * DOWN)]),
    ("\\(a\\) \\[b\\] c\\\\d", [("(a) [b] c\\d", 1.0)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("a\\b", [("ab", 1.0)]),  # a lone backslash is dropped
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("a (b [c", [("a ", 1.0), ("b ", 1.1), ("c", 1.1 * DOWN)]),
    ("a) b] c", [("a) b] c", 1.0)]),  # unmatched closers are text
    ("x:1.5) y", [("x:1.5) y", 1.0)]),  # a weight without an open "(" is text
    ("(x: 1.2)", [("x: 1.2", 1.1)]),  # kohya's regex: no spaces around the weight
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a BREAK b", [("a BREAK b", 1.0)]),  # BREAK is not special in kohya
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.3 * 1.1 * 1.1), (" ", 1.1), ("on", 1.1 * DOWN), (" a ", 1.1), ("hill", 0.5 * 1.1),
      (", sun, ", 1.1), ("sky", 1.1 * 1.1 * 1.1 * 1.1), (".", 1.1)]),
])
def test_parse_prompt_attention(text, expected):
    assert parse_prompt_attention(text) == expected


def test_parse_a1111_doctest_values_exactly():
    out = dict(parse_prompt_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."))
    assert out["house"] == 1.5730000000000004 and out["sky"] == 1.4641000000000006 and out["hill"] == 0.55


def test_invalid_weight_is_one_line_user_error():
    with pytest.raises(UserError, match=r"'\(a:1\.2\.3\)'.*'.*:1\.2\.3\)' is not a valid attention weight"):
        parse_prompt_attention("(a:1.2.3)")


def test_bpe_split_word_gets_its_weight_on_every_token():
    tok = ClipTokenizer.clip_l()
    assert tok.encode_without_specials("photorealistic") == [1153, 16157]
    ids, weights = tokenize_weighted(tok, ["a (photorealistic:1.5) [cat]"])
    assert ids.shape == weights.shape == (1, 77) and weights.dtype == torch.float32
    assert ids[0, :6].tolist() == [BOS, 320, 1153, 16157, 2368, EOS] and ids[0, 6:].eq(EOS).all()
    assert torch.equal(weights[0, :6], torch.tensor([1.0, 1.0, 1.5, 1.5, DOWN, 1.0]))  # float32, as kohya
    assert weights[0, 6:].eq(1.0).all()
    assert torch.equal(ids, tok.tokenize(["a photorealistic cat"]))


def test_te2_pad_token_and_bang_split_differently_from_te1():
    ids1, w1 = tokenize_weighted(ClipTokenizer.clip_l(), "(hello!!:2) x")
    ids2, w2 = tokenize_weighted(ClipTokenizer.openclip(), "(hello!!:2) x")
    assert ids1[0, :5].tolist() == [BOS, 3306, 748, 343, EOS] and w1[0, :5].tolist() == [1, 2, 2, 1, 1]
    assert ids2[0, :6].tolist() == [BOS, 3306, 0, 0, 343, EOS] and w2[0, :6].tolist() == [1, 2, 2, 2, 1, 1]
    assert ids2[0, 6:].eq(0).all() and w2[0, 6:].eq(1.0).all()  # TE2 pads with id 0, weight 1


@pytest.mark.parametrize("make", [ClipTokenizer.clip_l, ClipTokenizer.openclip])
@pytest.mark.parametrize("length", [77, 152, 227])
def test_plain_caption_tokens_equal_plain_tokenize(make, length):
    tok = make()
    caps = ["sks shape, a red circle on a vertical gradient, 64x64", "", "word " * 120, "a:b, c!"]
    ids, weights = tokenize_weighted(tok, caps, length)
    assert torch.equal(ids, tok.tokenize(caps, max_length=length))
    assert weights.eq(1.0).all()


def test_truncation_keeps_eos_last_and_weights():
    tok = ClipTokenizer.clip_l()
    ids, weights = tokenize_weighted(tok, "(" + "cat " * 100 + ")", 77)
    assert ids[0, 0] == BOS and ids[0, 1:76].eq(2368).all() and ids[0, 76] == EOS
    assert weights[0, 1:76].eq(torch.tensor(1.1)).all() and weights[0, 0] == 1.0 and weights[0, 76] == 1.0


def _long_caption():
    """80 tokens: "cat" ×70 at weight 1, then "dog" ×10 at weight 2 (tokens 71…80)."""
    return "cat " * 70 + "(" + "dog " * 10 + ":2)"


@pytest.mark.parametrize("make", [ClipTokenizer.clip_l, ClipTokenizer.openclip])
def test_weights_chunk_like_ids_for_a_150_token_budget(make):
    tok = make()
    ids, weights = tokenize_weighted(tok, [_long_caption(), "(a)"], 152)
    cids, cw = tokenize_chunks_weighted(tok, [_long_caption(), "(a)"], 152)
    assert cids.shape == cw.shape == (2, 2, 77)
    assert torch.equal(cids, chunk_token_ids(ids, tok.eos_token_id, tok.pad_token_id))
    assert cw[:, :, 0].eq(1.0).all() and cw[:, :, 76].eq(1.0).all()
    assert torch.equal(cw[:, 0, 1:76], weights[:, 1:76]) and torch.equal(cw[:, 1, 1:76], weights[:, 76:151])
    assert cw[0, 0, 71:76].eq(2.0).all() and cw[0, 1, 1:6].eq(2.0).all() and cw[0, 1, 6:].eq(1.0).all()
    assert cw[1, 0, 1] == pytest.approx(1.1) and cw[1, 0, 2:].eq(1.0).all() and cw[1, 1].eq(1.0).all()
    assert torch.equal(join_chunk_weights(cw), weights)  # re-joined weights line up with re-joined states


def test_chunk_shapes_for_225_and_77():
    w = torch.arange(227, dtype=torch.float32)[None]
    chunks = chunk_token_weights(w)
    assert chunks.shape == (1, 3, 77)
    assert chunks[0, 2, 1:76].tolist() == list(range(151, 226)) and chunks[0, 2, 76] == 1.0
    assert join_chunk_weights(chunks).shape == (1, 227)
    assert chunk_token_weights(w[:, :77]).shape == (1, 1, 77)
    assert torch.equal(join_chunk_weights(chunk_token_weights(w[:, :77])), w[:, :77])


def _kohya_weighting(states, weights):
    """Reference: kohya multiplies all 77 states (one chunk) or rows i·75+1 … i·75+75 by chunk i's interior."""
    out = states.clone()
    if weights.shape[1] == 1:
        return out * weights[:, 0, :, None]
    for i in range(weights.shape[1]):
        out[:, i * 75 + 1:i * 75 + 76] = out[:, i * 75 + 1:i * 75 + 76] * weights[:, i, 1:-1, None]
    return out


def test_apply_token_weights_matches_kohya_and_keeps_dtype():
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 3):
        length = 77 if n == 1 else 75 * n + 2
        states = torch.randn(2, length, 8, generator=gen)
        weights = chunk_token_weights(torch.rand(2, length, generator=gen) + 0.5)
        assert torch.equal(apply_token_weights(states, weights), _kohya_weighting(states, weights))
    half = torch.randn(1, 77, 4, generator=gen).half()
    w = torch.full((1, 1, 77), 1.1)
    out = apply_token_weights(half, w)
    assert out.dtype == torch.float16 and torch.equal(out, (half.float() * 1.1).half())


def _tes():
    torch.manual_seed(0)
    te1 = CLIPTextModel(ClipTextConfig.tiny()).eval()
    te2 = CLIPTextModelWithProjection(ClipTextConfig.tiny(projection_dim=32)).eval()
    return te1, te2


CAPS = ["a (red:1.5) circle on a [gradient], (hello!!:0.7)", "sks (" + "dog " * 80 + ")"]


@pytest.mark.parametrize("mtl", [None, 150])
def test_sd_weighted_encode_is_plain_states_times_weights(mtl):
    te, _ = _tes()
    fam = SdFamily(max_token_length=mtl, weighted_captions=True)
    tokens, weights = fam.tokenize_with_weights(CAPS)
    with torch.no_grad():
        plain = SdFamily(max_token_length=mtl).encode([te], tokens).context
        weighted = fam.encode_captions([te], CAPS).context
    assert torch.equal(weighted, _kohya_weighting(plain, weights[0]))
    assert not torch.equal(weighted, plain)


@pytest.mark.parametrize("mtl", [None, 150])
def test_sdxl_weighted_encode_weights_both_tes_not_pooled(mtl):
    te1, te2 = _tes()
    fam = SdxlFamily(max_token_length=mtl, weighted_captions=True)
    tokens, weights = fam.tokenize_with_weights(CAPS)
    assert not torch.equal(weights[0], weights[1])  # "!!" tokenizes differently in TE1 and TE2
    with torch.no_grad():
        plain = SdxlFamily(max_token_length=mtl).encode([te1, te2], tokens)
        weighted = fam.encode_captions([te1, te2], CAPS)
    d1 = te1.config.hidden_size
    assert torch.equal(weighted.context[..., :d1], _kohya_weighting(plain.context[..., :d1], weights[0]))
    assert torch.equal(weighted.context[..., d1:], _kohya_weighting(plain.context[..., d1:], weights[1]))
    assert torch.equal(weighted.pooled, plain.pooled)


def test_plain_captions_with_the_flag_equal_the_unweighted_path():
    te1, te2 = _tes()
    caps = ["sks shape, a red circle", "a photo of a cat"]
    with torch.no_grad():
        for cls, tes in ((SdFamily, [te1]), (SdxlFamily, [te1, te2])):
            on = cls(max_token_length=150, weighted_captions=True).encode_captions(tes, caps)
            off = cls(max_token_length=150).encode(tes, cls(max_token_length=150).tokenize(caps))
            assert torch.equal(on.context, off.context)
            assert (on.pooled is None and off.pooled is None) or torch.equal(on.pooled, off.pooled)


def test_flag_off_encode_captions_is_encode_of_tokenize():
    te1, te2 = _tes()
    fam = SdxlFamily()
    with torch.no_grad():
        a = fam.encode_captions([te1, te2], CAPS)
        b = fam.encode([te1, te2], fam.tokenize(CAPS))
    assert torch.equal(a.context, b.context) and torch.equal(a.pooled, b.pooled)


def test_sdxl_cache_outputs_are_weighted():
    te1, te2 = _tes()
    fam = SdxlFamily(weighted_captions=True)
    with torch.no_grad():
        h1, h2, pool = fam.cache_outputs([te1, te2], CAPS)
        conds = fam.encode_captions([te1, te2], CAPS)
    assert torch.equal(torch.cat([h1, h2], dim=2), conds.context) and torch.equal(pool, conds.pooled)


def test_family_kwargs_carry_the_flag():
    from sd_train.options import TrainOptions

    assert family_kwargs(TrainOptions().replace(weighted_captions=True))["weighted_captions"] is True
    assert family_kwargs(TrainOptions())["weighted_captions"] is False


@pytest.fixture(scope="module")
def assets(tiny_sdxl, tmp_path_factory):
    from tools.make_sample_dataset import make_sample_dataset

    root = tmp_path_factory.mktemp("weighted")
    ckpt = tiny_sdxl
    plain = make_sample_dataset(root / "plain")
    weighted = make_sample_dataset(root / "weighted")
    for txt in (weighted.parent / "10_sks shape").glob("*.txt"):
        words = txt.read_text(encoding="utf-8").strip().split(" ")
        txt.write_text(f"(sks:1.4) {words[1]} [[{' '.join(words[2:4])}]] ({' '.join(words[4:])}:0.6)",
                       encoding="utf-8")
    return ckpt, plain, weighted


def _train(ckpt, toml, out, *extra):
    from library.io.safetensors_io import load_file
    from sd_train.sdxl_train_network import main

    args = ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
            "--network_module", "networks.lora", "--network_dim", "4", "--resolution", "64",
            "--max_train_steps", "2", "--max_data_loader_n_workers", "0", "--seed", "7",
            "--learning_rate", "1e-3", "--network_train_unet_only", *extra]
    assert main(args) == 0
    return load_file(out / "last.safetensors")


def test_sdxl_e2e_weighted_captions(assets, tmp_path):
    ckpt, plain, weighted = assets
    tensors, meta = _train(ckpt, weighted, tmp_path / "w", "--weighted_captions")
    assert tensors and all(bool(torch.isfinite(v).all()) for v in tensors.values())
    assert any(bool(v.abs().sum() > 0) for k, v in tensors.items() if k.endswith("lora_up.weight"))
    assert "ss_weighted_captions" not in meta  # kohya writes no such key (FORMAT.md §4: kohya's key set)
    cached, _ = _train(ckpt, weighted, tmp_path / "c", "--weighted_captions", "--cache_text_encoder_outputs")
    assert all(torch.allclose(cached[k], tensors[k], atol=1e-6) for k in tensors)  # cache holds weighted states
    on, _ = _train(ckpt, plain, tmp_path / "p1", "--weighted_captions")
    off, _ = _train(ckpt, plain, tmp_path / "p0")
    assert all(torch.equal(on[k], off[k]) for k in on)  # no attention syntax: bit-identical to the flag off
    # The rewritten captions tokenize exactly like the plain ones, so only the weights tell the runs apart.
    tok = ClipTokenizer.clip_l()
    for txt in (weighted.parent / "10_sks shape").glob("*.txt"):
        original = (plain.parent / "10_sks shape" / txt.name).read_text(encoding="utf-8").strip()
        assert torch.equal(tokenize_weighted(tok, txt.read_text(encoding="utf-8"))[0], tok.tokenize(original))
    assert any(not torch.equal(tensors[k], off[k]) for k in tensors)  # the weights reach the UNet

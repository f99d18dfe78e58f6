"""Offline CLIP tokenizer: vocabulary, ids, padding, cache folders (TRAINING.md §2.3)."""

from __future__ import annotations

import json
import pickle
import sys

import ftfy
import pytest
import torch

from library.errors import UserError
from library.text.tokenizer import (
    ClipTokenizer,
    builtin_vocabulary,
    byte_unicode_table,
    resolve_tokenizer_dir,
)

CORPUS = [
    "a photo of a cat",
    "(masterpiece:1.2), best quality, 1girl, [blurry], ((detailed eyes)), <lora:foo:0.8>",
    "Café déjà vu — naïve façade, 東京タワー, Ελληνικά, Привет мир",
    "emoji 🐱🚀👩‍👩‍👧 and flags 🇯🇵 ✨",
    "Tom &amp; Jerry &lt;3 &quot;quoted&quot; &#39;single&#39;",
    "It's what we'd do, they're sure I'll go; you've seen I'm here   \t\n  with   spaces  ",
    "score_9, score_8_up, 2024, 3.14159, 1,000,000 dollars, #hashtag @user",
    "A VERY LOUD Caption With MiXeD CaSe and NUMBERS123abc",
]
LONG_CAPTION = ", ".join(f"word{i} tag_{i} blue sky" for i in range(12))


@pytest.fixture(scope="module")
def clip_l() -> ClipTokenizer:
    return ClipTokenizer.clip_l()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, clip_l):
    """vocab.json + merges.txt in the layout transformers / kohya save."""
    folder = tmp_path_factory.mktemp("hf_tok")
    (folder / "vocab.json").write_text(json.dumps(clip_l.vocab), encoding="utf-8")
    lines = ["#version: 0.2"] + [" ".join(m) for m in clip_l.merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_vocabulary_layout():
    vocab, merges = builtin_vocabulary()
    assert len(vocab) == 49408 and len(merges) == 48894
    chars = list(byte_unicode_table().values())
    assert len(set(chars)) == 256
    assert vocab["!"] == 0 and vocab[chars[255]] == 255
    assert vocab["!</w>"] == 256 and vocab[chars[0] + "</w>"] == 256
    assert vocab["".join(merges[0])] == 512 and vocab["".join(merges[-1])] == 49405
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert byte_unicode_table()[ord(" ")] == "Ġ"


def test_golden_ids_and_attributes(clip_l):
    assert clip_l.encode("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (clip_l.bos_token_id, clip_l.eos_token_id, clip_l.pad_token_id) == (49406, 49407, 49407)
    assert clip_l.model_max_length == 77


def test_never_imports_open_clip():
    sys.modules.pop("open_clip", None)
    ClipTokenizer.openclip()
    assert "open_clip" not in sys.modules


def test_matches_transformers_clip_tokenizer(clip_l, hf_dir):
    from transformers import CLIPTokenizer

    hf = CLIPTokenizer.from_pretrained(str(hf_dir))
    for text in CORPUS + [LONG_CAPTION]:
        # transformers >= 5 dropped the ftfy step of 4.x; apply it on its side.
        expected = hf(ftfy.fix_text(text))["input_ids"]
        assert clip_l.encode(text) == expected, text
    assert 100 < len(clip_l.encode(LONG_CAPTION)) < 225


def test_cleaning_matches_ftfy_transformers_4(clip_l):
    assert clip_l.encode("“Cat”  ＣＡＴ\n\tcat") == clip_l.encode('"cat" cat cat')
    assert clip_l.encode("Tom &amp; Jerry") == clip_l.encode("tom & jerry")
    assert clip_l.encode("  A Photo   OF a CAT ") == clip_l.encode("a photo of a cat")
    assert clip_l.encode("") == [49406, 49407]


def test_tokenize_pads_and_truncates(clip_l):
    ids = clip_l.tokenize(["a photo of a cat", LONG_CAPTION])
    assert ids.dtype == torch.long and ids.shape == (2, 77)
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (ids[0, 7:] == 49407).all()
    full = clip_l.encode(LONG_CAPTION)
    assert ids[1].tolist() == full[:76] + [49407]
    assert ids[1, 76].item() == 49407 and ids[1, 75].item() != 49407
    longer = clip_l.tokenize(LONG_CAPTION, max_length=227)
    assert longer[0].tolist() == full + [49407] * (227 - len(full))


def test_openclip_pads_with_zero():
    tok = ClipTokenizer.openclip()
    ids = tok.tokenize("a photo of a cat")[0].tolist()
    assert tok.pad_token_id == 0
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407] and ids[7:] == [0] * 70


def test_bpe_cache_is_per_instance_and_pickles(clip_l):
    other = ClipTokenizer.openclip()
    other.encode("zebra zebra")
    assert len(other._bpe_cache) == 1 and clip_l._bpe_cache is not other._bpe_cache
    clone = pickle.loads(pickle.dumps(other))  # DataLoader workers may pickle the tokenizer
    assert clone.tokenize(CORPUS).tolist() == other.tokenize(CORPUS).tolist()


def test_from_dir_round_trip(clip_l, hf_dir):
    loaded = ClipTokenizer.from_dir(hf_dir, pad_token_id=0)
    assert loaded.same_vocabulary(clip_l)
    assert loaded.pad_token_id == 0
    for text in CORPUS:
        assert loaded.encode(text) == clip_l.encode(text)
    changed = json.loads((hf_dir / "vocab.json").read_text(encoding="utf-8"))
    changed["extra"] = 49408
    other = ClipTokenizer(changed, loaded.merges, pad_token_id=0)
    assert not other.same_vocabulary(clip_l)


def test_from_dir_errors(tmp_path):
    with pytest.raises(UserError, match="cannot read vocab.json/merges.txt"):
        ClipTokenizer.from_dir(tmp_path, pad_token_id=0)
    (tmp_path / "vocab.json").write_text('{"a": 0}', encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(UserError, match="not a CLIP vocabulary"):
        ClipTokenizer.from_dir(tmp_path, pad_token_id=0)


def test_resolve_tokenizer_dir(tmp_path, hf_dir):
    assert resolve_tokenizer_dir(None, "clip_l") is None
    assert resolve_tokenizer_dir(tmp_path, "clip_l") is None
    for kind, sub in [("clip_l", "openai_clip-vit-large-patch14"),
                      ("openclip_bigg", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"),
                      ("sd2", "stabilityai_stable-diffusion-2/tokenizer"),
                      ("sd2", "stabilityai_stable-diffusion-2")]:
        root = tmp_path / kind / sub.replace("/", "_")
        folder = root / sub
        folder.mkdir(parents=True)
        for name in ("vocab.json", "merges.txt"):
            (folder / name).write_bytes((hf_dir / name).read_bytes())
        assert resolve_tokenizer_dir(root, kind) == folder
    (tmp_path / "empty" / "openai_clip-vit-large-patch14").mkdir(parents=True)
    assert resolve_tokenizer_dir(tmp_path / "empty", "clip_l") is None
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        resolve_tokenizer_dir(tmp_path, "t5")


def test_openclip_treats_exclamation_as_the_pad_token_like_transformers(hf_dir):
    """kohya's TE2 tokenizer (transformers, pad_token "!") never merges a caption's "!"."""
    from transformers import CLIPTokenizer

    hf = CLIPTokenizer.from_pretrained(str(hf_dir), pad_token="!")
    ours = ClipTokenizer.openclip()
    for text in ["wow! a cat!!", "hello!world", "no bang here", "(cute:1.2)!"]:
        assert ours.encode(text) == hf(ftfy.fix_text(text))["input_ids"], text
    assert ours.encode("cat!")[1:-1] == [2368, 0]
    assert ClipTokenizer.clip_l().encode("cat!")[1:-1] == [2368, 256]

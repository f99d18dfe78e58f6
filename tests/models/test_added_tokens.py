"""New tokens: ids after the vocabulary in the offline tokenizer (as transformers' ``add_tokens``), and a token
table whose only trainable part is the new rows (library/embeddings/rows.py)."""

from __future__ import annotations

import json

import pytest
import torch

from library.embeddings.rows import AddedTokenEmbedding, add_rows, clip_row_norms, concept_rows, random_rows
from library.errors import UserError
from library.models.text_encoders import ClipTextConfig, CLIPTextModel
from library.text.tokenizer import ClipTokenizer


@pytest.fixture()
def clip_l() -> ClipTokenizer:
    return ClipTokenizer.clip_l()


def test_new_tokens_get_ids_after_the_vocabulary(clip_l):
    assert clip_l.add_tokens(["<s0>", "<s1>"]) == [49408, 49409]
    assert clip_l.add_tokens(["<s2>"]) == [49410] and len(clip_l) == 49411
    ids = clip_l.encode("a photo of <s0><s1>, <s2> dog")
    assert ids == [49406, 320, 1125, 539, 49408, 49409, 267, 49410, 1929, 49407]
    openclip = ClipTokenizer.openclip()
    assert openclip.add_tokens(["<s0>", "<s1>"]) == [49408, 49409]
    assert openclip.encode("wow! <s0><s1>")[-4:] == [0, 49408, 49409, 49407]  # "!" stays the pad id (TE2)


def test_added_tokens_match_transformers(clip_l, tmp_path):
    """kohya's tokens ``hoge hoge1 hoge2``: longest match first, case-sensitive, never split by BPE."""
    from transformers import CLIPTokenizer

    (tmp_path / "vocab.json").write_text(json.dumps(clip_l.vocab), encoding="utf-8")
    merges = ["#version: 0.2"] + [" ".join(m) for m in clip_l.merges]
    (tmp_path / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
    hf = CLIPTokenizer.from_pretrained(str(tmp_path))
    tokens = ["mychar", "mychar1", "mychar2"]
    assert hf.add_tokens(tokens) == 3 and clip_l.add_tokens(tokens) == hf.convert_tokens_to_ids(tokens)
    for text in ["a photo of mychar mychar1 mychar2", "mychar2, mychar1 mychar", "xmychar1y", "mychar!mychar22"]:
        assert clip_l.encode(text) == hf(text)["input_ids"], text


@pytest.mark.parametrize("tokens, word", [(["cat"], "already exists"), (["a b"], "whitespace"),
                                          (["<s0>", "<s0>"], "already exists"), ([""], "non-empty")])
def test_bad_new_tokens_are_refused(clip_l, tokens, word):
    with pytest.raises(UserError, match=word):
        clip_l.add_tokens(tokens)


def test_only_the_new_rows_are_trainable_and_old_ids_read_the_table():
    te = CLIPTextModel(ClipTextConfig.tiny()).requires_grad_(False)
    ids = torch.tensor([[49406, 320, 49408, 49409, 49407]])
    before = te(ids[:, :2]).last_hidden_state
    rows = torch.randn(2, 32)
    module = add_rows(te, rows)
    assert te.get_input_embeddings() is module and isinstance(module, AddedTokenEmbedding)
    assert [n for n, p in te.named_parameters() if p.requires_grad] == ["text_model.embeddings.token_embedding.added"]
    assert "text_model.embeddings.token_embedding.weight" in te.state_dict()  # the table keeps its key
    out = te.text_model.embeddings.token_embedding(ids)
    torch.testing.assert_close(out[0, 2:4], rows)
    torch.testing.assert_close(out[0, :2], te.text_model.embeddings.token_embedding.weight[ids[0, :2]])
    torch.testing.assert_close(te(ids[:, :2]).last_hidden_state, before)
    te(ids).last_hidden_state.sum().backward()
    assert module.added.grad is not None and module.added.grad.abs().sum() > 0
    assert module.weight.grad is None


def test_row_initialisation_and_norm_clipping():
    table = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    torch.testing.assert_close(concept_rows(table, [1, 3], 3, mean=False), table[[1, 3, 1]])
    torch.testing.assert_close(concept_rows(table, [1, 3], 3, mean=True), table[[1, 3]].mean(0).repeat(3, 1))
    big = torch.randn(1000, 8) * 3
    rows = random_rows(big, 2000, torch.Generator().manual_seed(0))
    assert rows.shape == (2000, 8) and abs(float(rows.std()) - float(big.std())) < 0.1
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    clip_row_norms(rows, 1.0)
    torch.testing.assert_close(rows, torch.tensor([[0.6, 0.8], [0.3, 0.4]]))

"""Placeholder rewriting of pivotal tuning and textual inversion (captions.CaptionRewrite), worked examples:
the rewrite comes before dropout, wildcards, shuffling and keep_tokens, and a placeholder stays one tag."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from library.dataset.captions import CaptionOptions, CaptionRewrite, process_caption
from sd_train.options import TrainOptions
from sd_train.pivotal.plan import OBJECT_TEMPLATES, TokenPlan

PIVOTAL = CaptionRewrite(replacements=(("TOK", "<s0><s1>"), ("TOK2", "<s2><s3>")))


def run(caption, seed=0, rewrite=PIVOTAL, **kw):
    return process_caption(caption, CaptionOptions(**kw), random.Random(seed), rewrite=rewrite)


def test_placeholders_are_whole_words():
    assert run("a photo of TOK, TOK2 in TOKYO, myTOK") == "a photo of <s0><s1>, <s2><s3> in TOKYO, myTOK"
    assert run("TOK's hat, (TOK:1.2)") == "<s0><s1>'s hat, (<s0><s1>:1.2)"
    assert run("tok, Tok") == "tok, Tok"  # case-sensitive, as diffusers' and kohya's str.replace


def test_keep_tokens_counts_a_placeholder_as_one_tag():
    for seed in range(20):
        tags = run("TOK, red, ball, grass, sky", seed, keep_tokens=1, shuffle_caption=True).split(", ")
        assert tags[0] == "<s0><s1>" and sorted(tags[1:]) == ["ball", "grass", "red", "sky"]


def test_prefix_from_class_tokens_is_rewritten_before_shuffling():
    """A ``10_TOK dog`` folder without caption files: the class tokens are the caption; a prefix works alike."""
    for seed in range(10):
        out = run("red, ball, grass", seed, caption_prefix="TOK dog,", keep_tokens=1, shuffle_caption=True)
        assert out.split(", ")[0] == "<s0><s1> dog"


def test_same_draws_as_the_rewritten_caption():
    """The rewrite draws nothing: shuffling and tag dropout see exactly the caption written with the tokens."""
    kw = dict(shuffle_caption=True, caption_tag_dropout_rate=0.3, keep_tokens=1)
    for seed in range(10):
        assert run("x, TOK, y, TOK2, z", seed, **kw) == run("x, <s0><s1>, y, <s2><s3>, z", seed, rewrite=None, **kw)


def test_dropout_still_drops_and_wildcards_choose_rewritten_text():
    assert run("TOK, ball", caption_dropout_rate=1.0) == ""
    seen = {run("{TOK|a dog} in a park", seed, enable_wildcard=True) for seed in range(20)}
    assert seen == {"<s0><s1> in a park", "a dog in a park"}


def test_kohya_textual_inversion_tokens_and_templates():
    ti = SimpleNamespace(token_string="mytok", num_vectors_per_token=3, init_word=None, weights=None,
                         use_object_template=True, use_style_template=False)
    opts = TrainOptions.from_flat({k: v for k, v in vars(ti).items()})
    plan = TokenPlan.from_options(opts)
    assert plan.tokens == ["mytok", "mytok1", "mytok2"] and plan.joiner == " "
    rewrite = plan.caption_rewrite()
    expected = {t.format("mytok mytok1 mytok2") for t in OBJECT_TEMPLATES}
    outs = {run("ignored caption, mytok", seed, rewrite=rewrite) for seed in range(200)}
    assert outs <= expected and len(outs) > 10  # kohya draws a template per fetch; captions are ignored
    plain = TokenPlan.from_options(opts.replace(use_object_template=False)).caption_rewrite()
    assert run("mytok, dog", rewrite=plain) == "mytok mytok1 mytok2, dog"


def test_pivotal_plan_names_tokens_like_diffusers():
    opts = TrainOptions.from_flat({"train_text_encoder_ti": True, "token_abstraction": "TOK, TOK2",
                                   "num_new_tokens_per_abstraction": 3, "learning_rate": 1e-4})
    plan = TokenPlan.from_options(opts)
    assert plan.placeholders == {"TOK": ("<s0>", "<s1>", "<s2>"), "TOK2": ("<s3>", "<s4>", "<s5>")}
    assert plan.lr == 1e-4 and plan.stop_step(10) == 5 and plan.rewrite_prompt("TOK2 --n TOK") == (
        "<s3><s4><s5> --n <s0><s1><s2>")
    assert TokenPlan.from_options(TrainOptions.from_flat({"train_text_encoder_ti": True})).placeholders == {
        "TOK": ("<s0>", "<s1>")}
    assert TokenPlan.from_options(TrainOptions()) is None
    with pytest.raises(Exception, match="distinct words"):
        TokenPlan.from_options(TrainOptions.from_flat({"token_abstraction": "my tok"}))

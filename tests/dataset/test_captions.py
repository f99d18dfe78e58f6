"""The caption pipeline of DATASET.md §5, one rule at a time, with fixed seeds."""

from __future__ import annotations

import random

from library.dataset.captions import CaptionOptions, count_tags, process_caption, split_tags

CAP = "sks, dog, running, grass, sunny"


def run(caption, seed=0, **kw):
    opts = CaptionOptions(**{k: v for k, v in kw.items() if k in CaptionOptions.__dataclass_fields__})
    extra = {k: v for k, v in kw.items() if k not in CaptionOptions.__dataclass_fields__}
    return process_caption(caption, opts, random.Random(seed), **extra)


def test_no_options_keeps_first_line_only():
    assert run("a, b\nsecond line") == "a, b"


def test_prefix_suffix():
    assert run("dog", caption_prefix="photo of", caption_suffix="at night") == "photo of dog at night"


def test_worked_example_prefix_merges_into_first_tag():
    out = run(CAP, seed=3, keep_tokens=1, shuffle_caption=True, caption_tag_dropout_rate=0.1,
              caption_prefix="photo of")
    tags = out.split(", ")
    assert tags[0] == "photo of sks"
    assert set(tags[1:]) <= {"dog", "running", "grass", "sunny"}
    # Same draws as kohya: shuffle the flexible tags, then one random() per tag for dropout.
    rng = random.Random(3)
    flex = ["dog", "running", "grass", "sunny"]
    rng.shuffle(flex)
    assert tags[1:] == [t for t in flex if rng.random() >= 0.1]


def test_shuffle_is_seeded_and_keeps_tags():
    a = run(CAP, seed=1, shuffle_caption=True)
    assert a == run(CAP, seed=1, shuffle_caption=True)
    assert sorted(a.split(", ")) == sorted(CAP.split(", "))
    outs = {run(CAP, seed=s, shuffle_caption=True) for s in range(10)}
    assert len(outs) > 1


def test_keep_tokens_fixed_prefix():
    for seed in range(5):
        assert run(CAP, seed=seed, shuffle_caption=True, keep_tokens=2).startswith("sks, dog, ")


def test_keep_tokens_separator_prefix_and_suffix_drop_empty_tags():
    opts = CaptionOptions(keep_tokens_separator="|||")
    assert split_tags("a, b ||| c, , d ||| e, f", opts) == (["a", "b"], ["c", "d"], ["e", "f"])
    out = run("a, b ||| c, d ||| e", seed=2, shuffle_caption=True, keep_tokens_separator="|||")
    assert out.startswith("a, b, ") and out.endswith(", e")


def test_empty_tags_kept_without_separator():
    assert split_tags("a,, b", CaptionOptions(keep_tokens=1)) == (["a"], ["", "b"], [])
    assert run("a,, b", shuffle_caption=False, caption_tag_dropout_rate=0.0,
               token_warmup_step=0) == "a,, b"


def test_join_is_always_comma_space():
    assert run("a;b;c", caption_separator=";", token_warmup_step=1, current_step=5) == "a, b, c"


def test_whole_caption_dropout_rate():
    assert run(CAP, caption_dropout_rate=1.0) == ""
    kept = sum(run(CAP, seed=s, caption_dropout_rate=0.5) != "" for s in range(200))
    assert 70 < kept < 130


def test_dropout_every_n_epochs():
    assert run(CAP, caption_dropout_every_n_epochs=2, current_epoch=2) == ""
    assert run(CAP, caption_dropout_every_n_epochs=2, current_epoch=3) == CAP
    assert run(CAP, caption_dropout_every_n_epochs=1, current_epoch=1) == ""


def test_dropout_skips_prefix_and_secondary():
    assert run("a;;;b", caption_prefix="x", caption_dropout_rate=1.0,
               secondary_separator=";;;") == ""


def test_wildcards_lines_and_escapes():
    outs = {run("a {red|blue} {{x}}", seed=s, enable_wildcard=True) for s in range(20)}
    assert outs == {"a red {x}", "a blue {x}"}
    lines = {run("one\ntwo\n\nthree", seed=s, enable_wildcard=True) for s in range(30)}
    assert lines == {"one", "two", "three"}
    rng = random.Random(4)
    assert run("one\ntwo\nthree", seed=4, enable_wildcard=True) == rng.choice(["one", "two", "three"])


def test_token_warmup():
    caption = "a, b, c, d, e, f"
    assert run(caption, token_warmup_step=10, token_warmup_min=1, current_step=0) == "a"
    # floor(5 * (6 - 1) / 10) + 1 = 3 tags
    assert run(caption, token_warmup_step=10, token_warmup_min=1, current_step=5) == "a, b, c"
    assert run(caption, token_warmup_step=10, current_step=10) == caption
    # fraction of max_train_steps: 0.5 * 20 = 10 steps
    assert run(caption, token_warmup_step=0.5, current_step=5, max_train_steps=20) == "a, b, c"


def test_tag_dropout_only_flexible():
    out = run(CAP, caption_tag_dropout_rate=1.0, keep_tokens=1)
    assert out == "sks"
    assert run(CAP, seed=7, caption_tag_dropout_rate=0.3, keep_tokens=1) == run(
        CAP, seed=7, caption_tag_dropout_rate=0.3, keep_tokens=1)


def test_secondary_separator_moves_as_one_tag():
    out = run("x, a;;;b, y", seed=5, shuffle_caption=True, secondary_separator=";;;")
    assert "a,b" in out.split(", ")
    assert run("a;;;b", secondary_separator=";;;") == "a,b"


def test_is_random_and_tag_counts():
    assert not CaptionOptions(caption_prefix="x").is_random()
    assert CaptionOptions(shuffle_caption=True).is_random()
    assert count_tags(["A, b,, ", "a"]) == {"a": 2, "b": 1}

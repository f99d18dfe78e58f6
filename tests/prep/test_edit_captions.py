"""edit_captions: every chore on real caption files, exact output text, reports and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from library.prep.edits import CaptionEdits
from library.prep.tags import kohya_clean_caption, kohya_clean_tags, parse_replacements, strip_weight
from tools.edit_captions import main


def _caption(root: Path, stem: str) -> str:
    return (root / f"{stem}.txt").read_text(encoding="utf-8")


def test_trigger_front_after_keep_tokens_and_replacing_a_word(kit, tmp_path):
    kit.write_dataset(tmp_path / "a", {"x": "1girl, solo, smile"})
    kit.write_dataset(tmp_path / "b", {"x": "1girl, solo, smile"})
    kit.write_dataset(tmp_path / "c", {"x": "a photo of a woman, standing"})
    assert main([str(tmp_path / "a"), "--trigger", "sks"]) == 0
    assert main([str(tmp_path / "b"), "--trigger", "sks", "--keep_tokens", "1"]) == 0
    assert main([str(tmp_path / "c"), "--trigger", "sks woman", "--trigger_replaces", "woman"]) == 0
    assert _caption(tmp_path / "a", "x") == "sks, 1girl, solo, smile\n"
    assert _caption(tmp_path / "b", "x") == "1girl, sks, solo, smile\n"
    assert _caption(tmp_path / "c", "x") == "a photo of a sks woman, standing\n"
    # idempotent: a second run adds nothing
    assert main([str(tmp_path / "a"), "--trigger", "sks"]) == 0
    assert main([str(tmp_path / "c"), "--trigger", "sks woman", "--trigger_replaces", "woman"]) == 0
    assert _caption(tmp_path / "a", "x") == "sks, 1girl, solo, smile\n"
    assert _caption(tmp_path / "c", "x") == "a photo of a sks woman, standing\n"


def test_remove_replace_dedupe_sort_weights_lowercase_in_order(kit, tmp_path):
    kit.write_dataset(tmp_path, {"x": "(Blue Eyes:1.2), solo, long_hair, simple background, white background, "
                                  "Solo, ((smile)), [hat]"})
    code = main([str(tmp_path), "--strip_weights", "--lowercase", "--replace_tags", "long_hair,long hair",
                 "--remove_tags", "hat", "--remove_regex", r".* background", "--dedupe", "--sort",
                 "--keep_tokens", "1", "--trigger", "sks", "--replace_regex", "^smile$", "grin"])
    assert code == 0
    assert _caption(tmp_path, "x") == "blue eyes, sks, grin, long hair, solo\n"


def test_dry_run_prints_first_n_changes_and_writes_nothing(kit, tmp_path, capsys):
    kit.write_dataset(tmp_path, {"a": "cat", "b": "dog", "c": "sks, bird"})
    assert main([str(tmp_path), "--trigger", "sks", "--dry_run", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'a.txt'}:\n- cat\n+ sks, cat\n" in out
    assert "dog" not in out and "would change 2 of 3 caption files" in out
    assert _caption(tmp_path, "a") == "cat\n" and _caption(tmp_path, "b") == "dog\n"


def test_report_per_folder_and_occurrence_file(kit, tmp_path, capsys):
    kit.write_dataset(tmp_path / "10_sks", {"a": "sks, red, red, ball", "b": "sks, blue"})
    kit.write_dataset(tmp_path / "1_shape", {"c": "red,cube", "d": None})
    occ = tmp_path / "occ.txt"
    assert main([str(tmp_path), "--recursive", "--report", "--tag_occurrence", str(occ)]) == 0
    out = capsys.readouterr().out
    assert "changed 0 of 3 caption files; 1 images have no .txt caption" in out
    assert "tag frequencies (3 captions, 5 distinct tags):\n  red 2\n  sks 2\n  ball 1\n  blue 1\n  cube 1\n" in out
    assert "10_sks (4 distinct):\n  sks 2\n  ball 1\n  blue 1\n  red 1\n" in out
    assert "1_shape (2 distinct):\n  cube 1\n  red 1" in out
    assert occ.read_text() == "red 2\nsks 2\nball 1\nblue 1\ncube 1\n"
    assert (tmp_path / "1_shape" / "c.txt").read_text() == "red,cube\n"  # a report rewrites nothing
    assert main([str(tmp_path), "--recursive", "--tag_occurrence", str(occ), "--occurrence_order", "alpha"]) == 0
    assert occ.read_text() == "ball 1\nblue 1\ncube 1\nred 2\nsks 2\n"


def test_kohya_tag_preset():
    assert kohya_clean_tags(["1girl", "long_hair", "shirt", "white_shirt", "^_^", "rating:safe", "x"]) == [
        "1girl", "long hair", "white shirt", "^_^"]
    multi = ["2girls", "long hair", "short hair", "blue eyes", "red eyes", "blonde hair", "black hair", "smile"]
    assert kohya_clean_tags(multi) == ["2girls", "smile"]
    one_length = ["2girls", "long hair", "blonde hair", "black hair", "ponytail", "braid"]
    assert kohya_clean_tags(one_length) == ["2girls", "long hair"]
    assert kohya_clean_tags(["1girl", "blonde hair", "black hair"]) == ["1girl", "blonde hair", "black hair"]


def test_kohya_caption_preset_and_tool(kit, tmp_path):
    assert kohya_clean_caption("a cartoon drawing of a young anime woman") == "a drawing of a girl"
    kit.write_dataset(tmp_path, {"x": "an anime cartoon image of two women"})
    assert main([str(tmp_path), "--preset", "kohya_captions", "--caption_separator", "|"]) == 0
    assert _caption(tmp_path, "x") == "an image of two girls\n"


def test_helpers_exact():
    assert strip_weight("(a b:0.8)") == "a b" and strip_weight("[[x]]") == "x" and strip_weight("a (b)") == "a (b)"
    assert parse_replacements(r"a\,b,c;d,e\;f") == [("a,b", "c"), ("d", "e;f")]
    edits = CaptionEdits(trigger="sks", dedupe=True)
    assert edits.apply(edits.apply("a, a, b")) == edits.apply("a, a, b") == "sks, a, b"


@pytest.mark.parametrize("argv, message", [
    (["--remove_regex", "("], "--remove_regex '(': not a valid regular expression"),
    (["--replace_tags", "a,b,c"], "--replace_tags: 'a,b,c' is not 'source,target'"),
    (["--keep_tokens", "-1"], "--keep_tokens -1: must be 0 or more"),
])
def test_bad_flags_are_one_line(kit, tmp_path, capsys, argv, message):
    kit.write_dataset(tmp_path, {"x": "cat"})
    assert main([str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert _caption(tmp_path, "x") == "cat\n"


def test_missing_folder_is_one_line(kit, tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'}: folder not found; pass the folder that holds the images\n"

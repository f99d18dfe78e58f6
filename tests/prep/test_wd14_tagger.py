"""tag_images_by_wd14_tagger on a tiny ONNX tagger with the WD14 layout: exact captions per flag."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tools.tag_images_by_wd14_tagger import main

RED, MAGENTA = (255, 0, 0), (255, 0, 255)
RED_TAGS = "red_theme, simple_background, ^_^, hatsune_miku_(vocaloid)"


@pytest.fixture
def setup(kit, tmp_path):
    model = kit.write_tiny_tagger(tmp_path / "model")
    data = tmp_path / "data"
    kit.write_image(data / "a_red.png", (32, 32), RED)
    kit.write_image(data / "b_magenta.png", (32, 32), MAGENTA)

    def run(*argv):
        return main([str(data), "--model_dir", str(model), *argv])

    def caption(stem, ext=".txt"):
        return (data / f"{stem}{ext}").read_text(encoding="utf-8")

    return run, caption, data


def test_default_captions_and_category_thresholds(setup):
    run, caption, _ = setup
    assert run() == 0
    assert caption("a_red") == RED_TAGS + "\n"
    assert caption("b_magenta") == ("red_theme, blue_theme, simple_background, ^_^, hatsune_miku_(vocaloid), "
                                    "samus_aran\n")
    assert run("--overwrite", "--general_threshold", "0.6", "--character_threshold", "1.1") == 0
    assert caption("a_red") == "red_theme, ^_^\n"  # simple_background is 0.5; no character tags
    assert run("--overwrite", "--thresh", "0.9", "--onnx", "--meta_threshold", "0.1", "--use_quality_tags") == 0
    assert caption("a_red") == "red_theme, hatsune_miku_(vocaloid)\n"  # kohya's tag_mapping-only flags: no effect


def test_ordering_rules(setup):
    run, caption, _ = setup
    assert run("--character_tags_first", "--use_rating_tags", "--caption_extension", ".caption") == 0
    # character tags are moved to the front one by one (reverse label order), then the rating
    assert caption("b_magenta", ".caption") == ("sensitive, samus_aran, hatsune_miku_(vocaloid), red_theme, "
                                                "blue_theme, simple_background, ^_^\n")
    assert caption("a_red", ".caption") == "general, hatsune_miku_(vocaloid), red_theme, simple_background, ^_^\n"
    assert run("--overwrite", "--use_rating_tags_as_last_tag", "--always_first_tags", "^_^,red_theme") == 0
    assert caption("a_red") == "red_theme, ^_^, simple_background, hatsune_miku_(vocaloid), general\n"


def test_names_replacements_undesired_and_separator(setup):
    run, caption, _ = setup
    assert run("--remove_underscore", "--character_tag_expand", "--undesired_tags", "simple background",
               "--tag_replacement", "red theme,crimson\\, bright;^_^,smile", "--caption_separator", "; ") == 0
    assert caption("a_red") == "crimson, bright; smile; hatsune miku; vocaloid\n"


def test_append_mode_keeps_existing_tags(setup):
    run, caption, data = setup
    (data / "a_red.txt").write_text("sks, red_theme\n", encoding="utf-8")
    assert run() == 2  # neither --append_tags nor --overwrite
    assert caption("a_red") == "sks, red_theme\n"
    assert run("--append_tags") == 0
    assert caption("a_red") == "sks, red_theme, simple_background, ^_^, hatsune_miku_(vocaloid)\n"


def test_frequency_output(setup, capsys):
    run, _, _ = setup
    assert run("--frequency_tags", "--use_rating_tags") == 0
    out = capsys.readouterr().out
    assert out == ("Tag frequencies:\nred_theme: 2\nsimple_background: 2\n^_^: 2\nhatsune_miku_(vocaloid): 2\n"
                   "general: 1\nblue_theme: 1\nsamus_aran: 1\nsensitive: 1\n")


def test_preprocessing_white_padding_alpha_and_bgr(kit, tmp_path):
    model = kit.write_tiny_tagger(tmp_path / "model")
    data = tmp_path / "data"
    kit.write_image(data / "wide_red.png", (32, 16), RED)  # padded with white: mean G = B = 0.5
    Image.fromarray(np.zeros((20, 20, 4), np.uint8), "RGBA").save(data / "clear.png")  # transparent -> white
    assert main([str(data), "--model_dir", str(model), "--thresh", "0.45", "--batch_size", "2"]) == 0
    assert (data / "wide_red.txt").read_text() == ("red_theme, green_theme, blue_theme, simple_background, ^_^, "
                                                   "hatsune_miku_(vocaloid), samus_aran\n")
    assert (data / "clear.txt").read_text() == (data / "wide_red.txt").read_text()  # white: every theme


def test_fixed_batch_kohya_layout_and_metadata_output(kit, tmp_path, capsys):
    kit.write_tiny_tagger(tmp_path / "models" / "owner_tiny", batch=1)
    data = tmp_path / "data"
    for i in range(3):
        kit.write_image(data / "sub" / f"{i}.png", (8, 8), RED)
    out = tmp_path / "meta.json"
    assert main([str(data), "--recursive", "--repo_id", "owner/tiny", "--model_dir", str(tmp_path / "models"),
                 "--batch_size", "4", "--output_path", str(out)]) == 0
    assert "the model takes batches of 1; using --batch_size 1" in capsys.readouterr().out
    meta = json.loads(out.read_text())
    assert meta[str(data / "sub" / "0.png")] == {"tags": RED_TAGS, "image_size": [8, 8]}
    assert len(meta) == 3 and not list(data.rglob("*.txt"))


def test_missing_model_offline_is_one_line(kit, tmp_path, capsys):
    kit.write_image(tmp_path / "data" / "x.png")
    code = main([str(tmp_path / "data"), "--repo_id", "SmilingWolf/wd-vit-tagger-v3", "--model_dir",
                 str(tmp_path / "models")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: cannot download model.onnx, selected_tags.csv of SmilingWolf/wd-vit-tagger-v3 (")
    assert err.endswith(f"download model.onnx and selected_tags.csv from the hub repository "
                        f"SmilingWolf/wd-vit-tagger-v3 into {tmp_path / 'models' / 'SmilingWolf_wd-vit-tagger-v3'}\n")


def test_corrupt_image_and_bad_csv_are_one_line(kit, tmp_path, capsys):
    model = kit.write_tiny_tagger(tmp_path / "model")
    data = tmp_path / "data"
    kit.write_image(data / "ok.png")
    (data / "bad.png").write_bytes(b"not an image")
    assert main([str(data), "--model_dir", str(model)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {data / 'bad.png'}: corrupt or unreadable image")
    assert not (data / "ok.txt").exists()
    (data / "bad.png").unlink()
    (model / "selected_tags.csv").write_text("id,tag\n1,x\n")
    assert main([str(data), "--model_dir", str(model)]) == 2
    assert f"{model / 'selected_tags.csv'}: not a WD14 selected_tags.csv" in capsys.readouterr().err

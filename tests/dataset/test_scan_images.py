"""Image discovery, header checks, mode conversion, caption files and metadata (DATASET.md §4)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from library.dataset import CliDefaults, build_plan, prepare
from library.dataset import images as im
from library.dataset import scan
from library.errors import UserError


def test_list_images_extensions_case_and_order(tmp_path, make_image):
    for name in ("b.PNG", "a.jpg", "c.webp", "d.bmp", "e.jpeg", "skip.gif", "note.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.png").write_bytes(b"x")
    names = [os.path.basename(p) for p in scan.list_images(str(tmp_path))]
    assert names == ["a.jpg", "b.PNG", "c.webp", "d.bmp", "e.jpeg"]


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "LA", "RGBA", "CMYK", "I;16"])
def test_mode_conversion(tmp_path, make_image, mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    path = make_image(tmp_path / f"x.{fmt.lower()}", (20, 10), mode, fmt=fmt)
    assert scan.check_image(path) == (20, 10)
    rgb = im.load_image(path)
    assert rgb.shape == (10, 20, 3) and rgb.dtype == np.uint8
    assert im.load_image(path, keep_alpha=True).shape == (10, 20, 4)


def test_alpha_kept_and_sixteen_bit_scaled(tmp_path, make_image):
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., 3] = 128
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    rgba = im.load_image(str(tmp_path / "a.png"), keep_alpha=True)
    assert float(im.alpha_of(rgba)[0, 0]) == pytest.approx(128 / 255)
    Image.fromarray(np.full((2, 2), 65535, np.uint16)).save(tmp_path / "w.png")
    assert im.load_image(str(tmp_path / "w.png")).max() == 255


def test_exif_orientation_not_applied(tmp_path):
    img = Image.new("RGB", (30, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    img.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert im.load_image(str(tmp_path / "r.jpg")).shape == (10, 30, 3)  # kohya-compat


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated_png", "truncated_jpg"])
def test_bad_images_are_named_before_training(tmp_path, make_image, kind):
    folder = tmp_path / "1_x"
    make_image(folder / "good.png", (64, 64))
    bad = folder / ("bad.jpg" if kind == "truncated_jpg" else "bad.png")
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "garbage":
        bad.write_bytes(b"not an image at all")
    else:
        make_image(bad, (64, 64), fmt="JPEG" if kind == "truncated_jpg" else "PNG")
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    before = sorted(os.listdir(folder))
    with pytest.raises(UserError) as exc:
        prepare(build_plan(CliDefaults(train_data_dir=str(tmp_path), resolution="64")),
                seed=0, bucket_step_multiple=64, is_sdxl=False)
    assert str(bad) in str(exc.value)
    assert sorted(os.listdir(folder)) == before  # nothing written


def test_decompression_bomb_limit(tmp_path, make_image, monkeypatch):
    path = make_image(tmp_path / "big.png", (100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UserError, match=r"big\.png: image too large"):
        scan.check_image(path)


def test_caption_lookup_rules(tmp_path, make_image):
    make_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("first line \nsecond\n", encoding="utf-8")
    assert scan.find_caption(str(tmp_path / "a.png"), ".txt", False) == "first line"
    assert scan.find_caption(str(tmp_path / "a.png"), ".txt", True) == "first line\nsecond"
    (tmp_path / "face.txt").write_text("face caption")
    assert scan.find_caption(str(tmp_path / "face_10_20_30_40.png"), ".txt", False) == "face caption"
    assert scan.face_info("x/face_10_20_30_40.png") == (10, 20, 30, 40)
    assert scan.find_caption(str(tmp_path / "none.png"), ".txt", False) is None
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(UserError, match=r"e\.txt: caption file is empty"):
        scan.find_caption(str(tmp_path / "e.png"), ".txt", False)
    (tmp_path / "u.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(UserError, match=r"u\.txt: caption file is not valid UTF-8"):
        scan.find_caption(str(tmp_path / "u.png"), ".txt", False)


def test_class_tokens_fallback_and_orphans(tmp_path, make_folder):
    folder = make_folder("t/3_sks cat", [(64, 64)] * 3, captions=["one", None, None],
                         caption_ext=".caption")
    (tmp_path / "t" / "3_sks cat" / "lonely.caption").write_text("x")
    data = prepare(build_plan(CliDefaults(train_data_dir=str(tmp_path / "t"), resolution="64")),
                   seed=0, bucket_step_multiple=64, is_sdxl=False)
    assert [r.caption for r in data.train[0].records] == ["one", "sks cat", "sks cat"]
    stats = data.train[0].subsets[0]
    assert stats.captions_missing == 2
    assert stats.orphan_captions == [os.path.join(folder, "lonely.caption")]


def test_metadata_json_and_jsonl(tmp_path, make_image):
    make_image(tmp_path / "a.png", (64, 32))
    make_image(tmp_path / "b.png", (32, 64))
    (tmp_path / "m.json").write_text(json.dumps({
        "a.png": {"caption": "a cat", "tags": "x, y"}, "b": {"tags": "z"}}))
    rows = scan.load_metadata(str(tmp_path / "m.json"), str(tmp_path), ", ", False)
    assert [(r["caption"], r["tags"]) for r in rows] == [("a cat, x, y", "x, y"), ("z", "z")]
    (tmp_path / "m.jsonl").write_text('{"image_path": "a.png", "caption": "l1\\nl2", '
                                      '"tags": "t1\\nt2"}\n')
    rows = scan.load_metadata(str(tmp_path / "m.jsonl"), str(tmp_path), ",", True)
    assert rows[0]["caption"] == "l1,t1,t2\nl2,t1,t2"
    with pytest.raises(UserError, match="is relative; set image_dir"):
        scan.load_metadata(str(tmp_path / "m.json"), None, ",", False)
    plan = build_plan(CliDefaults(in_json=str(tmp_path / "m.json"),
                                  train_data_dir=str(tmp_path), resolution="64",
                                  enable_bucket=True, min_bucket_reso=64))
    data = prepare(plan, seed=0, bucket_step_multiple=64, is_sdxl=False)
    assert [r.size for r in data.train[0].records] == [(64, 32), (32, 64)]
    assert data.tag_frequency == {"m.json": {"x": 1, "y": 1, "z": 1}}


def test_empty_dataset_error(tmp_path):
    (tmp_path / "2_x").mkdir()
    with pytest.raises(UserError, match=r"datasets\[0\]: no images found"):
        prepare(build_plan(CliDefaults(train_data_dir=str(tmp_path), resolution="64")),
                seed=0, bucket_step_multiple=64, is_sdxl=False)


def test_resize_and_trim():
    arr = np.zeros((100, 200, 3), np.uint8)
    assert im.resize(arr, (100, 50), None).shape == (50, 100, 3)
    assert im.resize(arr, (400, 200), "bicubic").shape == (200, 400, 3)
    out, offsets = im.trim(np.zeros((341, 1024, 3), np.uint8), (1024, 320))
    assert out.shape == (320, 1024, 3) and offsets == (0, 10)


def test_random_trim_stays_in_range_and_varies():
    import random

    arr = np.zeros((64, 100, 3), np.uint8)
    offsets = {im.trim(arr, (64, 64), random.Random(s))[1] for s in range(30)}
    assert all(0 <= left <= 36 and top == 0 for left, top in offsets) and len(offsets) > 5

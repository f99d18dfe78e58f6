"""prepare_images: every image lands in the trainer's own bucket; focus crops follow faces and saliency."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from library.dataset import CliDefaults, plan_from_data, prepare
from library.dataset.images import load_sample_array
from tools.prepare_images import main

SIZES = [(640, 480), (480, 640), (1000, 300), (300, 1000), (512, 512), (333, 517), (800, 450), (700, 701)]


def _gradient(w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1)
    return (base + rng.integers(0, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)


def _trainer_view(folder, dataset: dict):
    """``{stem: (record, spec)}`` of the trainer's own pre-pass over ``folder``."""
    data = {"datasets": [{**dataset, "subsets": [{"image_dir": str(folder), "caption_extension": ".txt"}]}]}
    prepared = prepare(plan_from_data(data, CliDefaults(), "test"), seed=0, bucket_step_multiple=64, is_sdxl=False)
    ds = prepared.train[0]
    return {r.path.rsplit("/", 1)[1].rsplit(".", 1)[0]: (r, ds.spec) for r in ds.records}


BUCKETS = {"resolution": 512, "enable_bucket": True, "min_bucket_reso": 256, "max_bucket_reso": 1024,
           "bucket_reso_steps": 64}


@pytest.mark.parametrize("dataset, flags", [
    (BUCKETS, ["--enable_bucket", "--min_bucket_reso", "256", "--max_bucket_reso", "1024"]),
    ({"resolution": 512, "enable_bucket": True, "bucket_no_upscale": True}, ["--enable_bucket", "--bucket_no_upscale"]),
    ({"resolution": [384, 256], "enable_bucket": False}, ["--resolution", "384,256"]),
])
def test_each_image_lands_in_the_trainers_bucket(tmp_path, dataset, flags):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i, (w, h) in enumerate(SIZES):
        Image.fromarray(_gradient(w, h, i)).save(src / f"img{i}.png")
        (src / f"img{i}.txt").write_text(f"caption {i}\n")
    assert main([str(src), str(dst), "--crop", "center", "--resolution", "512", *flags]) == 0
    before = _trainer_view(src, dataset) if dataset.get("enable_bucket") else None
    after = _trainer_view(dst, dataset)
    assert sorted(after) == [f"img{i}" for i in range(len(SIZES))]
    for stem, (rec, spec) in after.items():
        assert rec.size == rec.bucket == rec.resized, stem  # no resize or trim left for the trainer
        assert rec.caption == f"caption {stem[3:]}"
        if before is None:
            assert rec.bucket == tuple(spec.resolution)
            continue
        src_rec, src_spec = before[stem]
        assert rec.bucket == src_rec.bucket, stem
        # the centre crop is exactly what training on the original would see
        trained, _, _ = load_sample_array(src_spec, src_rec, src_spec.subsets[0], None)
        assert np.array_equal(np.asarray(Image.open(dst / f"{stem}.png")), trained), stem


def test_focus_crop_centres_the_face(kit, tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    img = np.full((400, 640, 3), (60, 120, 60), np.uint8)
    kit.draw_face(img, (150, 200), 160)
    src.mkdir()
    Image.fromarray(img).save(src / "face.png")
    assert main([str(src), str(dst), "--crop", "focus", "--resolution", "256", "--debug"]) == 0
    out = np.asarray(Image.open(dst / "face.png"))
    assert out.shape == (256, 256, 3)
    # 640x400 -> 410x256; the face centre x=150 -> 96, so the window starts at 0 (centre crop: 77)
    expected = np.asarray(Image.fromarray(img).resize((410, 256), Image.Resampling.BOX))[:, :256]
    assert np.abs(out.astype(int) - expected).mean() < 3
    assert f"{src / 'face.png'}: 256x256 crop at (0, 0) on the face" in capsys.readouterr().out
    assert (tmp_path / "dst_crop_boxes.png").is_file()


def test_focus_crop_window_is_centred_on_a_detected_face(kit, tmp_path):
    from library.prep.crop import CropPlan, focus_offset
    from library.prep.focus import FaceDetector, find_focus

    img = np.full((400, 640, 3), (60, 120, 60), np.uint8)
    kit.draw_face(img, (380, 170), 120)
    found = find_focus(img, FaceDetector())
    assert found.source == "face" and len(found.faces) == 1
    assert abs(found.centre[0] - 380) <= 4 and abs(found.centre[1] - 170) <= 8
    plan = CropPlan(tmp_path, (640, 400), (256, 256), (410, 256))
    left, top = focus_offset(plan, found)
    assert top == 0 and abs(left - (380 * 410 / 640 - 128)) <= 3


def test_focus_without_faces_follows_saliency(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    img = np.full((256, 768, 3), 128, np.uint8)
    img[100:160, 600:660] = (250, 30, 30)  # one small object far right
    src.mkdir()
    Image.fromarray(img).save(src / "obj.png")
    assert main([str(src), str(dst), "--crop", "focus", "--resolution", "256"]) == 0
    out = np.asarray(Image.open(dst / "obj.png"))
    assert out.shape == (256, 256, 3)
    red = np.argwhere((out[..., 0] > 200) & (out[..., 1] < 80))
    assert len(red) == 60 * 60  # the whole object is inside the crop (a centre crop has none of it)
    assert abs(red[:, 1].mean() - 128) < 40


def test_crop_none_is_kohyas_area_resize_and_filters(kit, tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    kit.write_image(src / "big.png", (1000, 500))
    kit.write_image(src / "tiny.png", (40, 40))
    kit.write_image(src / "small.jpg", (301, 203))
    assert main([str(src), str(dst), "--crop", "none", "--max_resolution", "512x512", "--divisible_by", "8",
                 "--min_size", "64", "--output_format", "jpg"]) == 0
    assert Image.open(dst / "big.jpg").size == (720, 360)  # sqrt(512*512/500000) -> 724x362, floored to 8
    assert Image.open(dst / "small.jpg").size == (296, 200)
    assert not (dst / "tiny.jpg").exists()
    assert "(40x40: shorter side below --min_size 64)" in capsys.readouterr().out


def test_bad_input_is_one_line_and_writes_nothing(kit, tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    kit.write_image(src / "a.png", (300, 300))
    (src / "b.png").write_bytes(b"\x89PNG broken")
    assert main([str(src), str(dst)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {src / 'b.png'}: corrupt or unreadable image")
    assert not dst.exists()
    (src / "b.png").unlink()
    assert main([str(src), str(dst), "--enable_bucket", "--bucket_reso_steps", "48"]) == 2
    assert "bucket_reso_steps = 48: must be a multiple of 64" in capsys.readouterr().err
    assert main([str(src), str(dst)]) == 0
    assert main([str(src), str(dst)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {dst / 'a.png'}: 1 output file(s) already exist")

"""make_captions on a tiny random BLIP saved to a folder: kohya's prompt handling and length flags."""

from __future__ import annotations

from tools.make_captions import main


def _data(kit, tmp_path):
    data = tmp_path / "data"
    kit.write_image(data / "a.png", (40, 30))
    kit.write_image(data / "sub" / "b.jpg", (30, 50), (10, 200, 10))
    return data


def test_sampling_and_beam_search_captions_exact(kit, tmp_path):
    model = kit.write_tiny_blip(tmp_path / "blip")
    data = _data(kit, tmp_path)
    assert main([str(data), "--caption_weights", str(model), "--max_length", "8", "--recursive"]) == 0
    # 4 prompt tokens ([DEC] a picture of) + 4 generated; the prompt is cut off
    assert (data / "a.caption").read_text() == "dog dog dog dog\n"
    assert (data / "sub" / "b.caption").read_text() == "dog dog dog dog\n"
    assert main([str(data), "--caption_weights", str(model), "--beam_search", "--num_beams", "2", "--max_length",
                 "6", "--caption_extension", ".txt", "--batch_size", "2"]) == 0
    assert (data / "a.txt").read_text() == "dog dog\n" and not (data / "sub" / "b.txt").exists()


def test_min_length_holds_back_the_end_token(kit, tmp_path):
    model = kit.write_tiny_blip(tmp_path / "blip", favourite="cat", eos_bias=60.0)
    data = _data(kit, tmp_path)
    assert main([str(data), "--caption_weights", str(model), "--min_length", "7", "--seed", "1"]) == 0
    assert (data / "a.caption").read_text() == "cat cat cat\n"


def test_existing_captions_need_overwrite_and_bad_models_are_one_line(kit, tmp_path, capsys):
    model = kit.write_tiny_blip(tmp_path / "blip")
    data = _data(kit, tmp_path)
    (data / "a.caption").write_text("mine\n")
    capsys.readouterr()
    assert main([str(data), "--caption_weights", str(model)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {data / 'a.caption'}: 1 output file(s) already exist")
    assert (data / "a.caption").read_text() == "mine\n"
    assert main([str(data), "--caption_weights", "model_large_caption.pth", "--overwrite"]) == 2
    assert "not pickled .pth weights; use Salesforce/blip-image-captioning-large" in capsys.readouterr().err
    assert main([str(data), "--caption_weights", str(tmp_path / "empty"), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load BLIP from the hub repository") and err.count("\n") == 1
    assert main([str(data), "--caption_weights", str(model), "--min_length", "9", "--max_length", "8"]) == 2
    assert "--min_length 9 is above --max_length 8" in capsys.readouterr().err
    assert (data / "a.caption").read_text() == "mine\n"

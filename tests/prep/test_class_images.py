"""generate_class_images and the trainer's --generate_class_images on tiny single-file checkpoints."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from library.prep.class_images import ClassImageJob, missing
from tools.generate_class_images import main


@pytest.fixture(scope="module")
def tiny_sd15(tmp_path_factory):
    from tools.make_tiny_model import make_tiny_checkpoint

    return make_tiny_checkpoint("sd15", tmp_path_factory.mktemp("sd15") / "tiny_sd15.safetensors")


def _run(model, folder, *argv):
    return main([str(folder), "--pretrained_model_name_or_path", str(model), "--class_prompt", "a photo of a dog",
                 "--steps", "1", "--seed", "5", *argv])


def test_fills_resumes_and_matches_an_uninterrupted_run(tiny_sd15, tmp_path, capsys):
    folder = tmp_path / "reg" / "1_dog"
    assert _run(tiny_sd15, folder, "--num_images", "2", "--bucket_list", "64x64,96x64") == 0
    assert sorted(p.name for p in folder.iterdir()) == ["class_00000.png", "class_00000.txt",
                                                        "class_00001.png", "class_00001.txt"]
    assert Image.open(folder / "class_00000.png").size == (64, 64)
    assert Image.open(folder / "class_00001.png").size == (96, 64)  # the sizes are used in turn
    assert (folder / "class_00001.txt").read_text() == "a photo of a dog\n"
    assert [p.name for p in tmp_path.joinpath("reg").iterdir()] == ["1_dog"]  # no work folder left behind
    assert _run(tiny_sd15, folder, "--num_images", "3", "--bucket_list", "64x64,96x64") == 0
    assert "1 class images written" in capsys.readouterr().out
    # a second folder whose first two images exist renders only image 2, identical to the first run's
    other = tmp_path / "other" / "1_dog"
    other.mkdir(parents=True)
    for name in ("class_00000.png", "class_00001.png"):
        shutil.copy(folder / name, other / name)
    assert _run(tiny_sd15, other, "--num_images", "3", "--bucket_list", "64x64,96x64") == 0
    assert sorted(p.name for p in other.glob("*.txt")) == ["class_00002.txt"]
    assert np.array_equal(np.asarray(Image.open(other / "class_00002.png")),
                          np.asarray(Image.open(folder / "class_00002.png")))
    assert _run(tiny_sd15, folder, "--num_images", "3") == 0  # full: nothing loads, nothing changes
    assert "0 class images written" in capsys.readouterr().out


def test_missing_counts_existing_images_of_any_name(tmp_path):
    folder = tmp_path / "1_cat"
    folder.mkdir()
    for name in ("x.jpg", "class_00001.png"):
        Image.new("RGB", (8, 8)).save(folder / name)
    assert missing(ClassImageJob(folder, 4, "cat")) == [0, 2]


@pytest.mark.parametrize("argv, message", [
    (["--num_images", "0"], "the number of images, --steps and --batch_size must be at least 1"),
    (["--resolution", "100"], "image size 100x100: sides must be multiples of 8 and at least 64"),
    (["--bucket_list", "64x"], "use 'SIZE', 'W,H' or 'WxH,WxH'"),
])
def test_bad_values_fail_before_the_model_loads(tmp_path, capsys, argv, message):
    assert _run(tmp_path / "missing.safetensors", tmp_path / "1_dog", *argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_trainer_fills_the_reg_subset_then_trains(tiny_sd15, tmp_path, kit):
    from sd_train.train_network import main as train

    for i in range(2):
        kit.write_image(tmp_path / "img" / "2_sks dog" / f"{i}.png", (64, 64), (200, 40 * i, 30))
    (tmp_path / "reg" / "1_dog").mkdir(parents=True)
    argv = ["--pretrained_model_name_or_path", str(tiny_sd15), "--train_data_dir", str(tmp_path / "img"),
            "--reg_data_dir", str(tmp_path / "reg"), "--resolution", "64", "--network_module", "networks.lora",
            "--network_dim", "2", "--max_train_steps", "1", "--output_dir", str(tmp_path / "out"),
            "--output_name", "lora", "--generate_class_images", "2", "--seed", "3", "--caption_extension", ".txt"]
    assert train(argv) == 0
    reg = tmp_path / "reg" / "1_dog"
    assert sorted(p.name for p in reg.iterdir()) == ["class_00000.png", "class_00000.txt",
                                                     "class_00001.png", "class_00001.txt"]
    assert (reg / "class_00000.txt").read_text() == "dog\n"
    assert Image.open(reg / "class_00001.png").size == (64, 64)
    assert (tmp_path / "out" / "lora.safetensors").is_file()
    report = (tmp_path / "out" / "lora_dataset_report.json").read_text()
    assert "class_00001.png" in report  # the trainer scanned the generated images

"""Where the dataset meets the trainer: conditioning-image masks with cached latents, and images larger than the
resolution without buckets when latents are cached."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from library.dataset import BucketBatchDataset, CliDefaults, build_plan, prepare
from library.io.safetensors_io import load_file
from sd_train.sdxl_train_network import main as sdxl_main


def _image_dir(assets) -> Path:
    return next(p for p in assets[1].parent.iterdir() if p.is_dir())


def _toml(path: Path, image_dir: Path, general: str = "", subset: str = "") -> Path:
    path.write_text(f'[general]\ncaption_extension = ".txt"\nresolution = 64\nbatch_size = 2\n{general}\n'
                    f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{image_dir.as_posix()}"\n{subset}\n')
    return path


def _masks(image_dir: Path, folder: Path) -> Path:
    """One mask per image: the left half black (no loss), the right half white."""
    folder.mkdir()
    for image in image_dir.glob("*.png"):
        with Image.open(image) as im:
            w, h = im.size
        mask = Image.new("RGB", (w, h), (255, 255, 255))
        mask.paste((0, 0, 0), (0, 0, w // 2, h))
        mask.save(folder / image.name)
    return folder


def _run(assets, toml, out, *extra) -> dict[str, torch.Tensor]:
    assert sdxl_main(["--pretrained_model_name_or_path", str(assets[0]), "--dataset_config", str(toml),
                      "--output_dir", str(out), "--network_module", "networks.lora", "--network_train_unet_only",
                      "--max_train_steps", "2", "--max_data_loader_n_workers", "0", "--seed", "7",
                      "--learning_rate", "1e-3", *extra]) == 0
    return load_file(out / "last.safetensors")[0]


def test_conditioning_masks_apply_with_cached_latents(assets, tmp_path):
    """Before: ``--masked_loss`` + ``--cache_latents`` wrote a LoRA bit-identical to the unmasked run."""
    image_dir = _image_dir(assets)
    masks = _masks(image_dir, tmp_path / "masks")
    plain = _toml(tmp_path / "plain.toml", image_dir, "enable_bucket = true\nmin_bucket_reso = 64\n"
                  "max_bucket_reso = 128")
    masked = _toml(tmp_path / "masked.toml", image_dir, "enable_bucket = true\nmin_bucket_reso = 64\n"
                   "max_bucket_reso = 128", f'conditioning_data_dir = "{masks.as_posix()}"')
    unmasked_run = _run(assets, plain, tmp_path / "a", "--cache_latents")
    masked_run = _run(assets, masked, tmp_path / "b", "--cache_latents", "--masked_loss")
    assert any(not torch.equal(unmasked_run[k], masked_run[k]) for k in unmasked_run)

    data = prepare(build_plan(CliDefaults(dataset_config=str(masked), masked_loss=True)), seed=0,
                   bucket_step_multiple=32, is_sdxl=True)
    dataset = BucketBatchDataset(data.train, dataset_seed=0)
    dataset.latents_cached = True
    for rec in data.train[0].records:  # stand-in latents: only the mask path is under test here
        rec.latents = torch.zeros(4, rec.bucket[1] // 8, rec.bucket[0] // 8)
    batch = dataset[0]
    mask = batch["alpha_masks"]
    assert mask is not None and mask.shape[1:] == (batch["target_sizes_hw"][0, 0], batch["target_sizes_hw"][0, 1])
    width = mask.shape[2]
    assert float(mask[:, :, : width // 4].max()) == 0.0 and float(mask[:, :, -(width // 4):].min()) == 1.0


def test_no_buckets_with_cached_latents_resizes_large_images(assets, tmp_path):
    """Before: "image too large, but cropping and bucketing are disabled" during caching, after the models loaded,
    although the pre-pass and check_dataset accepted the data (kohya resizes and centre-crops)."""
    toml = _toml(tmp_path / "fixed.toml", _image_dir(assets))  # 96x64, 128x80, ... images at resolution 64
    weights = _run(assets, toml, tmp_path / "out", "--cache_latents")
    assert weights and all(bool(torch.isfinite(v).all()) for v in weights.values())


def test_cached_latents_of_a_large_image_are_its_resized_centre(assets, tmp_path):
    """The cached latent of a 128×80 image at resolution 64 is the encoding of its 102×64 resize, centre 64×64."""
    import numpy as np

    from library.dataset import images as im
    from library.dataset import latent_cache

    toml = _toml(tmp_path / "fixed.toml", _image_dir(assets))
    data = prepare(build_plan(CliDefaults(dataset_config=str(toml))), seed=0,
                   bucket_step_multiple=32, is_sdxl=True, latents_cached=True)
    dataset = BucketBatchDataset(data.train, dataset_seed=0)
    seen = []
    latent_cache.cache_latents(dataset, lambda images: seen.append(images) or torch.zeros(len(images), 4, 8, 8),
                               batch_size=1, to_disk=False, progress=False)
    wide = next(i for i, r in enumerate(data.train[0].records) if r.size == (128, 80))
    rec = data.train[0].records[wide]
    assert (rec.bucket, rec.resized) == ((64, 64), (102, 64))
    expected = im.to_tensor(im.trim(im.resize(im.load_image(rec.path), (102, 64), None), (64, 64))[0])
    assert any(torch.equal(batch[0], expected) for batch in seen)
    assert all(batch.shape[-2:] == (64, 64) for batch in seen) and np.isfinite(expected.numpy()).all()


def _debug_dataset(assets, out, *data_args) -> dict:
    import json

    assert sdxl_main(["--pretrained_model_name_or_path", str(assets[0]), "--output_dir", str(out),
                      "--resolution", "64", "--enable_bucket", "--min_bucket_reso", "64", "--debug_dataset",
                      *data_args]) == 0
    return json.loads((out / "last_dataset_report.json").read_text())


def test_caption_hints(assets, tmp_path, capsys):
    """Before: ``.txt`` captions beside the images with the default ``.caption`` extension, and images training on
    an empty caption, showed only "captions found 0, missing 8"."""
    image_dir = _image_dir(assets)
    report = _debug_dataset(assets, tmp_path / "a", "--train_data_dir", str(image_dir.parent))
    assert f"{image_dir}: 8 images have no .caption caption file but .txt files are next to them: set " \
           'caption_extension = ".txt"' in report["warnings"]
    bare = tmp_path / "bare"
    bare.mkdir()
    for image in sorted(image_dir.glob("*.png"))[:3]:
        (bare / image.name).write_bytes(image.read_bytes())
    toml = _toml(tmp_path / "bare.toml", bare, "enable_bucket = true\nmin_bucket_reso = 64")
    report = _debug_dataset(assets, tmp_path / "b", "--dataset_config", str(toml))
    assert report["warnings"] == [f"{bare}: 3 of 3 images train with an empty caption (no or empty .txt files, no "
                                  "class_tokens); add captions or set class_tokens"]
    assert f"warning: {bare}: 3 of 3 images train with an empty caption" in capsys.readouterr().out


def test_folder_without_repeat_count_is_named(assets, tmp_path, capsys):
    """Before: "no `N_name` subfolders found …; did you mean its parent?", and the warning naming the folder lost."""
    parent = tmp_path / "train"
    (parent / "sks dog").mkdir(parents=True)
    assert sdxl_main(["--pretrained_model_name_or_path", str(assets[0]), "--output_dir", str(tmp_path / "o"),
                      "--resolution", "64", "--train_data_dir", str(parent)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --train_data_dir {parent}: no `N_name` subfolders; 'sks dog' has no repeat count: rename e.g. "
        "'sks dog' to '10_sks dog' (10 repeats per epoch)")


def test_hugging_face_metadata_jsonl(assets, tmp_path):
    """Before: refused with "a jsonl line has no image_path"."""
    import json

    folder = tmp_path / "hf"
    folder.mkdir()
    rows = []
    for i, image in enumerate(sorted(_image_dir(assets).glob("*.png"))[:4]):
        (folder / image.name).write_bytes(image.read_bytes())
        rows.append({"file_name": image.name, "text": f"a photo of shape {i}"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    toml = tmp_path / "ft.toml"
    toml.write_text(f'[general]\nresolution = 64\nbatch_size = 2\nenable_bucket = true\nmin_bucket_reso = 64\n'
                    f'[[datasets]]\n[[datasets.subsets]]\nmetadata_file = "{(folder / "metadata.jsonl").as_posix()}"\n')
    assert _run(assets, toml, tmp_path / "out")
    data = prepare(build_plan(CliDefaults(dataset_config=str(toml))), seed=0, bucket_step_multiple=32, is_sdxl=True)
    assert sorted((Path(r.path).parent, r.caption) for r in data.train[0].records) == [
        (folder, f"a photo of shape {i}") for i in range(4)]

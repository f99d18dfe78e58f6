"""BucketBatchDataset batches, seeded order, SDXL conditioning and the step arithmetic."""

from __future__ import annotations

import pytest
import torch

from library.dataset import BucketBatchDataset, CliDefaults, build_plan, prepare
from library.errors import UserError


def _data(tmp_path, make_folder, write_toml, extra_subset="", batch=2, extra_ds=""):
    make_folder("d/a", [(128, 96), (200, 64), (64, 180), (128, 128), (130, 100)],
                captions=["a, b, c, d"] * 5)
    path = write_toml(f"""
[[datasets]]
resolution = 128
batch_size = {batch}
enable_bucket = true
min_bucket_reso = 64
max_bucket_reso = 256
{extra_ds}
  [[datasets.subsets]]
  image_dir = "{tmp_path}/d/a"
  caption_extension = ".txt"
  num_repeats = 3
  {extra_subset}
""")
    return prepare(build_plan(CliDefaults(dataset_config=path)), seed=0,
                   bucket_step_multiple=64, is_sdxl=True)


def test_len_is_batches_per_epoch_and_batches_are_whole_buckets(tmp_path, make_folder, write_toml):
    data = _data(tmp_path, make_folder, write_toml, batch=2)
    counts = {tuple(b["resolution"]): b["count"] for b in data.report()["datasets"][0]["buckets"]}
    assert counts == {(64, 192): 3, (128, 128): 9, (192, 64): 3}
    ds = BucketBatchDataset(data.train, dataset_seed=1)
    assert len(ds) == 2 + 5 + 2 == data.report()["steps_per_epoch"]
    seen = []
    for i in range(len(ds)):
        b = ds[i]
        n = len(b["captions"])
        assert b["images"].shape[0] == n and n <= 2
        h, w = b["images"].shape[2:]
        assert b["target_sizes_hw"].tolist() == [[h, w]] * n
        assert b["images"].min() >= -1 and b["images"].max() <= 1
        assert b["latents"] is None and b["alpha_masks"] is None
        assert b["loss_weights"].tolist() == [1.0] * n
        assert b["network_multipliers"].tolist() == [1.0] * n
        seen += b["image_paths"]
    assert len(seen) == 15 and all(seen.count(p) == 3 for p in set(seen))


def test_order_is_pure_function_of_seed_epoch_index(tmp_path, make_folder, write_toml):
    data = _data(tmp_path, make_folder, write_toml, extra_subset="shuffle_caption = true\n"
                 "  flip_aug = true")
    a = BucketBatchDataset(data.train, dataset_seed=7, load_images=False)
    b = BucketBatchDataset(data.train, dataset_seed=7, load_images=False)
    picks = [3, 0, 5]
    first = [(a[i]["image_paths"], a[i]["captions"]) for i in picks]
    assert first == [(b[i]["image_paths"], b[i]["captions"]) for i in picks]  # any access order
    b.set_epoch(2)
    assert [b[i]["image_paths"] for i in range(len(b))] != [a[i]["image_paths"]
                                                           for i in range(len(a))]
    c = BucketBatchDataset(data.train, dataset_seed=8, load_images=False)
    assert [c[i]["captions"] for i in range(len(c))] != [a[i]["captions"] for i in range(len(a))]


def test_caption_dropout_follows_set_epoch(tmp_path, make_folder, write_toml):
    data = _data(tmp_path, make_folder, write_toml,
                 extra_subset="caption_dropout_every_n_epochs = 2")
    ds = BucketBatchDataset(data.train, dataset_seed=0, load_images=False)
    assert ds[0]["captions"][0] == "a, b, c, d"
    ds.set_epoch(2)
    assert ds[0]["captions"] == [""] * len(ds[0]["captions"])


def test_sdxl_sizes_and_flip(tmp_path, make_folder, write_toml):
    data = _data(tmp_path, make_folder, write_toml, batch=1, extra_subset="flip_aug = true")
    ds = BucketBatchDataset(data.train, dataset_seed=3)
    crops = set()
    for i in range(len(ds)):
        b = ds[i]
        if b["image_paths"][0].endswith("img04.png"):  # 130 x 100 -> bucket (128, 128)
            assert b["original_sizes_hw"].tolist() == [[100, 130]]
            assert b["target_sizes_hw"].tolist() == [[128, 128]]
            crops.add(tuple(b["crop_top_lefts"][0].tolist()))
    assert crops == {(14, 0)}  # letterbox value of §7, same when flipped
    e = next(e for e in data.report()["datasets"][0]["images"] if e["path"].endswith("img04.png"))
    assert e == {"path": e["path"], "bucket": [128, 128], "resized": [166, 128],
                 "crop_ltrb": [19, 0, 147, 128], "original_size": [130, 100],
                 "crop_top_left": [14, 0]}


def test_flip_mirrors_the_image(tmp_path, make_folder, write_toml):
    data = _data(tmp_path, make_folder, write_toml, batch=1, extra_subset="flip_aug = true")
    plain = BucketBatchDataset(data.train, dataset_seed=3)
    for spec in (s.spec for s in data.train[0].subsets):
        spec.flip_aug = False
    ref = {}
    for i in range(len(plain)):
        b = plain[i]
        ref.setdefault(b["image_paths"][0], b["images"][0])
    for st in data.train[0].subsets:
        st.spec.flip_aug = True
    kinds = set()
    for i in range(len(plain)):
        b = plain[i]
        img, base = b["images"][0], ref[b["image_paths"][0]]
        kinds.add("same" if torch.equal(img, base) else
                  "flipped" if torch.equal(img, base.flip(-1)) else "other")
    assert kinds == {"same", "flipped"}


def test_reg_loss_weight_and_multiplier(tmp_path, make_folder, write_toml):
    make_folder("r/reg", [(128, 128)] * 2)
    data = _data(tmp_path, make_folder, write_toml, batch=1, extra_ds="network_multiplier = 0.5")
    assert data.train[0].spec.network_multiplier == 0.5
    ds = BucketBatchDataset(data.train, dataset_seed=0)
    assert ds[0]["network_multipliers"].tolist() == [0.5]
    make_folder("t/1_x", [(128, 128)] * 2)
    make_folder("rr/1_y", [(128, 128)] * 2)
    data = prepare(build_plan(CliDefaults(train_data_dir=str(tmp_path / "t"), resolution="128",
                                          reg_data_dir=str(tmp_path / "rr"),
                                          prior_loss_weight=0.25)),
                   seed=0, bucket_step_multiple=64, is_sdxl=False)
    ds = BucketBatchDataset(data.train, dataset_seed=0)
    weights = {}
    for i in range(len(ds)):
        b = ds[i]
        weights[b["image_paths"][0]] = b["loss_weights"].tolist()[0]
    assert sorted(weights.values()) == [0.25, 0.25, 1.0, 1.0]


def test_alpha_mask_batch(tmp_path, make_image, write_toml):
    make_image(tmp_path / "m" / "a.png", (64, 64), "RGBA")
    path = write_toml(f"""
[[datasets]]
resolution = 64
  [[datasets.subsets]]
  image_dir = "{tmp_path}/m"
  alpha_mask = true
""")
    data = prepare(build_plan(CliDefaults(dataset_config=path)), seed=0, bucket_step_multiple=64,
                   is_sdxl=False)
    b = BucketBatchDataset(data.train, dataset_seed=0)[0]
    assert b["alpha_masks"].shape == (1, 64, 64)
    assert 0 <= float(b["alpha_masks"].min()) and float(b["alpha_masks"].max()) <= 1
    assert b["crop_top_lefts"].tolist() == [[0, 0]]


def test_no_bucket_sizes_are_checked_in_the_prepass(tmp_path, make_image, write_toml):
    make_image(tmp_path / "n" / "a.png", (80, 64))
    toml = """
[[datasets]]
resolution = 64
  [[datasets.subsets]]
  image_dir = "{dir}"
  {extra}
"""
    path = write_toml(toml.format(dir=f"{tmp_path}/n", extra=""))
    with pytest.raises(UserError) as err:
        prepare(build_plan(CliDefaults(dataset_config=path)), seed=0, bucket_step_multiple=64, is_sdxl=False)
    assert str(err.value) == (f"{tmp_path}/n/a.png: image too large (80x64 > resolution 64x64), but cropping and "
                              "bucketing are disabled (datasets[0]); enable_bucket or random_crop, or resize the image")
    # cached latents resize every image to the resolution, so the pre-pass lets it through
    data = prepare(build_plan(CliDefaults(dataset_config=path)), seed=0, bucket_step_multiple=64, is_sdxl=False,
                   latents_cached=True)
    with pytest.raises(UserError, match=r"a\.png: image too large, but cropping and bucketing are disabled"):
        BucketBatchDataset(data.train, dataset_seed=0)[0]  # decoding it uncached still refuses
    crop = write_toml(toml.format(dir=f"{tmp_path}/n", extra="random_crop = true"))
    data = prepare(build_plan(CliDefaults(dataset_config=crop)), seed=0, bucket_step_multiple=64, is_sdxl=False)
    assert BucketBatchDataset(data.train, dataset_seed=0)[0]["images"].shape == (1, 3, 64, 64)
    make_image(tmp_path / "s" / "b.png", (64, 48))
    small = write_toml(toml.format(dir=f"{tmp_path}/s", extra="random_crop = true"))
    with pytest.raises(UserError, match=r"b\.png: image is 64x48, smaller than resolution 64x64 \(datasets\[0\]\)"):
        prepare(build_plan(CliDefaults(dataset_config=small)), seed=0, bucket_step_multiple=64, is_sdxl=False)


def test_dataloader_with_workers_matches(tmp_path, make_folder, write_toml):
    data = _data(tmp_path, make_folder, write_toml, extra_subset="shuffle_caption = true")
    ds = BucketBatchDataset(data.train, dataset_seed=4, load_images=False)
    direct = [ds[i]["captions"] for i in range(len(ds))]
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=1)
    assert [b["captions"] for b in loader] == direct


def test_persistent_workers_see_set_epoch(tmp_path, make_folder, write_toml):
    data = _data(tmp_path, make_folder, write_toml)
    ds = BucketBatchDataset(data.train, dataset_seed=4, load_images=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1,
                                         persistent_workers=True)
    first = [b["image_paths"] for b in loader]
    ds.set_epoch(2)
    second = [b["image_paths"] for b in loader]
    assert first != second
    assert second == [ds[i]["image_paths"] for i in range(len(ds))]

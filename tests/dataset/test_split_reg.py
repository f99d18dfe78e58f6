"""Regularization balancing (DATASET.md §8) and the disjoint validation split (§9)."""

from __future__ import annotations

import math
import random

import pytest

from library.dataset import CliDefaults, build_plan, prepare
from library.dataset.split import balance_reg, split_validation


def test_reg_balancing_spec_example():
    counts = balance_reg([1] * 30, 100)
    assert counts == [4] * 10 + [3] * 20 and sum(counts) == 100


def test_reg_balancing_more_reg_than_needed():
    counts = balance_reg([1] * 300, 100)
    assert counts[:100] == [1] * 100 and counts[100:] == [0] * 200


def test_reg_balancing_own_repeats_first_pass_and_empty():
    assert balance_reg([3, 3], 10) == [5, 5]
    assert balance_reg([5, 5], 4) == [5, 0]  # first pass may overshoot
    assert balance_reg([], 10) == []


@pytest.mark.parametrize("n,split", [(10, 0.35), (7, 0.5), (100, 0.1), (3, 1.0), (1, 0.2)])
def test_split_is_disjoint_and_complete(n, split):
    keys = [f"img{i}" for i in range(n)]
    train, val = split_validation(keys, split, seed=123)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(keys)
    assert len(train) == math.ceil(n * (1 - split))


def test_split_matches_kohya_permutation_and_sizes():
    keys = list(range(10))
    train, val = split_validation(keys, 0.35, seed=7)
    order = list(keys)
    random.seed(7)
    random.shuffle(order)
    assert (train, val) == (order[:7], order[7:])  # 7 training, 3 validation, no overlap


def test_split_outside_range_is_no_split():
    assert split_validation([1, 2], 0.0, 1) == ([1, 2], [])
    assert split_validation([1, 2], 1.5, 1) == ([1, 2], [])


def test_prepare_balances_reg_and_splits(tmp_path, make_folder, write_toml):
    make_folder("data/train", [(64, 64)] * 10)
    make_folder("data/reg", [(64, 64)] * 30)
    path = write_toml(f"""
[[datasets]]
resolution = 64
batch_size = 4
validation_split = 0.2
validation_seed = 5
  [[datasets.subsets]]
  image_dir = "{tmp_path}/data/train"
  num_repeats = 10
  [[datasets.subsets]]
  image_dir = "{tmp_path}/data/reg"
  is_reg = true
""")
    data = prepare(build_plan(CliDefaults(dataset_config=path, prior_loss_weight=0.5)), seed=1,
                   bucket_step_multiple=64, is_sdxl=False)
    ds = data.train[0]
    train_paths = {r.path for r in ds.records if not r.is_reg}
    val_paths = {r.path for r in data.validation[0].records}
    assert len(train_paths) == 8 and len(val_paths) == 2 and not train_paths & val_paths
    assert data.num_train_images == 80 and data.num_reg_images == 30
    assert data.num_validation_images == 2
    reg = [r.num_repeats for r in ds.records if r.is_reg]
    assert sum(reg) == 80 and reg[:20] == [3] * 20 and reg[20:] == [2] * 10
    assert ds.num_samples() == 160
    assert all(not r.is_reg and r.num_repeats == 1 for r in data.validation[0].records)

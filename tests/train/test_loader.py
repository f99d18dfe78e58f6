"""sd_train.loader: per-epoch batch positions, process split, and persistent DataLoader workers."""

from __future__ import annotations

import pytest
import torch

from library.io.safetensors_io import load_file
from sd_train.loader import EpochLoader
from sd_train.sdxl_train_network import main as sdxl_main


class _EpochEcho:
    """A dataset whose items are (epoch, step, index), read from shared memory like BucketBatchDataset."""

    def __init__(self, n: int):
        self.n = n
        self._state = torch.tensor([1, 0]).share_memory_()

    def __len__(self):
        return self.n

    def set_epoch(self, epoch):
        self._state[0] = epoch

    def set_current_step(self, step):
        self._state[1] = step

    def __getitem__(self, index):
        return (int(self._state[0]), int(self._state[1]), index)


def test_indices_split_processes_and_pad_to_equal_length():
    ranks = [EpochLoader(_EpochEcho(5), 2, r, 0, False) for r in (0, 1)]
    assert [r.indices() for r in ranks] == [[0, 2, 4], [1, 3, 0]]
    assert ranks[1].indices(start=2) == [0]


@pytest.mark.parametrize("persistent", [False, True])
def test_each_epoch_sees_its_own_epoch_and_start(persistent):
    loader = EpochLoader(_EpochEcho(4), 1, 0, workers=1, persistent=persistent)
    first = loader.epoch(0, 0, global_step=0)
    assert [tuple(x) for x in first] == [(1, 0, 0), (1, 0, 1), (1, 0, 2), (1, 0, 3)]
    second = loader.epoch(1, 2, global_step=4)
    assert [tuple(x) for x in second] == [(2, 4, 2), (2, 4, 3)]
    assert (second is first) == persistent  # one DataLoader, workers kept alive, only when asked


def test_persistent_needs_workers():
    assert not EpochLoader(_EpochEcho(4), 1, 0, workers=0, persistent=True).persistent


def test_persistent_workers_train_exactly_like_the_main_process(assets, tmp_path):
    ckpt, _ = assets
    data = tmp_path / "data.toml"
    data.write_text(
        "[[datasets]]\nresolution = 64\nbatch_size = 2\nenable_bucket = true\nmin_bucket_reso = 32\n"
        f"max_bucket_reso = 128\nbucket_reso_steps = 32\n[[datasets.subsets]]\nimage_dir = '{_image_dir(assets)}'\n"
        "class_tokens = 'sks shape'\nnum_repeats = 1\n", encoding="utf-8")
    runs = {}
    for name, extra in [("main", ["--max_data_loader_n_workers", "0"]),
                        ("workers", ["--max_data_loader_n_workers", "2", "--persistent_data_loader_workers"])]:
        out = tmp_path / name
        assert sdxl_main(["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(data),
                          "--output_dir", str(out), "--network_module", "networks.lora", "--network_dim", "4",
                          "--max_train_epochs", "2", "--seed", "5", "--learning_rate", "1e-3",
                          "--network_train_unet_only", "--shuffle_caption", *extra]) == 0
        runs[name] = load_file(out / "last.safetensors")[0]
    assert runs["main"].keys() == runs["workers"].keys()
    assert all(torch.equal(runs["main"][k], runs["workers"][k]) for k in runs["main"])


def _image_dir(assets):
    return next(p for p in assets[1].parent.iterdir() if p.is_dir()).as_posix()

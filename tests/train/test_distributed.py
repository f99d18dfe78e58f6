"""sd_train.distributed: process-group options and explicit gradient averaging."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import torch

from sd_train import distributed


def test_ddp_timeout_reaches_the_process_group(monkeypatch):
    made = []
    monkeypatch.setattr(distributed, "PartialState", lambda **kwargs: made.append(kwargs) or kwargs)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    distributed.process_state(7)
    distributed.process_state(None)
    assert made == [{"cpu": False, "timeout": timedelta(minutes=7)}, {"cpu": False}]


def test_gloo_on_cpu_only_for_launched_processes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert not distributed.gloo_on_cpu()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.gloo_on_cpu()


def test_single_process_leaves_gradients_alone():
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([1.0, 2.0])
    distributed.average_gradients([p], SimpleNamespace(num_processes=1))
    assert torch.equal(p.grad, torch.tensor([1.0, 2.0]))


def test_missing_gradients_count_as_zeros_in_the_mean():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(1, 2, dtype=torch.float64))
    a.grad = torch.tensor([2.0, 4.0])
    seen = []

    def reduce(flat, reduction):
        seen.append((flat.clone(), reduction))
        return flat / 2  # the other process contributed zeros

    distributed.average_gradients([a, b], SimpleNamespace(num_processes=2, reduce=reduce))
    assert torch.equal(seen[0][0], torch.tensor([2.0, 4.0, 0.0, 0.0])) and seen[0][1] == "mean"
    assert torch.equal(a.grad, torch.tensor([1.0, 2.0]))
    assert b.grad.dtype == torch.float64 and b.grad.shape == (1, 2) and not b.grad.any()

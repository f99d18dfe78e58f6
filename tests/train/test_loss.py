"""Loss formulas against hand-computed values (TRAINING.md §6)."""

from __future__ import annotations

import math

import pytest
import torch

from sd_train import loss as L
from sd_train.noise import make_schedule


def test_element_losses():
    p, t = torch.tensor([[[[3.0]]]]), torch.tensor([[[[1.0]]]])
    c = torch.tensor([0.5])
    assert L.element_loss(p, t, "l2").item() == 4.0
    assert L.element_loss(p, t, "l1").item() == 2.0
    soft = math.sqrt(4 + 0.25) - 0.5
    assert L.element_loss(p, t, "huber", c).item() == pytest.approx(2 * 0.5 * soft)
    assert L.element_loss(p, t, "smooth_l1", c).item() == pytest.approx(2 * soft)


def test_huber_c_schedules():
    acp = make_schedule().alphas_cumprod
    t = torch.tensor([0, 500, 1000 - 1])
    assert torch.allclose(L.huber_c(t, acp, "constant", 0.1, 2.0), torch.full((3,), 0.2))
    exp = L.huber_c(torch.tensor([0, 1000]), torch.ones(1001), "exponential", 0.1, 2.0)
    assert exp.tolist() == pytest.approx([2.0, 0.2])
    a = acp[500].item()
    sigma = math.sqrt((1 - a) / a)
    assert L.huber_c(t, acp, "snr", 0.1)[1].item() == pytest.approx(0.9 / (1 + sigma) ** 2 + 0.1, rel=1e-5)


def test_mask_area_resize_without_renormalization():
    loss = torch.ones(1, 1, 2, 2)
    mask = torch.tensor([[[1.0, 1.0, 0.0, 0.0]] * 4])
    out = L.apply_mask(loss, mask)
    assert out[0, 0].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    cond = torch.tensor([[[[-1.0]], [[5.0]], [[5.0]]]])
    assert L.conditioning_mask(cond).item() == 0.0


def test_snr_weights():
    snr = torch.tensor([0.5, 4.0, 2000.0])
    assert L.min_snr_weight(snr, 1.0, False).tolist() == pytest.approx([1.0, 0.25, 1 / 2000])
    assert L.min_snr_weight(snr, 1.0, True).tolist() == pytest.approx([0.5 / 1.5, 1 / 5, 1 / 2001])
    assert L.v_pred_like_scale(snr).tolist() == pytest.approx([1 / 3, 0.8, 1000 / 1001])
    assert L.debiased_weight(snr, False).tolist() == pytest.approx([1 / math.sqrt(0.5), 0.5, 1 / math.sqrt(1000)])
    assert L.debiased_weight(snr, True).tolist() == pytest.approx([1 / 1.5, 0.2, 1 / 1001])


def test_per_sample_loss_order():
    snr = torch.full((1000,), 4.0)
    acp = torch.full((1000,), 0.8)
    pred, target = torch.full((2, 1, 2, 2), 2.0), torch.zeros(2, 1, 2, 2)
    t = torch.tensor([1, 2])
    opts = L.LossOptions(min_snr_gamma=2.0, v_pred_like_loss=0.5, debiased_estimation_loss=True)
    out = L.per_sample_loss(pred, target, t, acp, snr, opts, loss_weights=torch.tensor([1.0, 0.5]))
    base = 4.0 * 0.5  # l2 * min(4,2)/4
    base = base + base / 0.8 * 0.5  # v-pred-like loss
    base = base * 0.5  # debiased 1/sqrt(4)
    assert out.tolist() == pytest.approx([base, base * 0.5])


def test_unknown_loss_type_raises():
    with pytest.raises(ValueError, match="loss_type"):
        L.element_loss(torch.zeros(1), torch.zeros(1), "l3")


def test_loss_recorder_slots_replace_in_later_epochs():
    rec = L.LossRecorder()
    rec.add(0, torch.tensor(1.0), 1)
    rec.add(1, torch.tensor(3.0), 2)
    assert rec.flush() == [(1, 1.0, 1.0), (2, 3.0, 2.0)] and rec.pending == []
    rec.add(0, torch.tensor(5.0), 3)  # second epoch, slot 0 replaced
    assert rec.flush() == [(3, 5.0, 4.0)] and rec.slots == [5.0, 3.0]
    assert rec.flush() == []

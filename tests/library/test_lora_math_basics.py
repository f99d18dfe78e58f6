"""delta_weight equals running the two LoRA layers one after the other."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from library.lora.algebra import delta_weight, lora_scale


def test_lora_scale_defaults():
    assert lora_scale(1.0, 4) == 0.25
    assert lora_scale(None, 4) == 1.0
    assert lora_scale(0, 8) == 1.0
    assert lora_scale(torch.tensor(16.0), 8) == 2.0


def test_linear_delta_matches_layers():
    down, up, x = torch.randn(4, 10), torch.randn(6, 4), torch.randn(3, 10)
    assert torch.allclose(x @ delta_weight(up, down, 0.5).T, F.linear(F.linear(x, down), up) * 0.5, atol=1e-5)


def test_conv3x3_delta_matches_layers():
    down, up = torch.randn(4, 5, 3, 3), torch.randn(7, 4, 1, 1)
    x = torch.randn(2, 5, 9, 9)
    ref = F.conv2d(F.conv2d(x, down, padding=1), up) * 2.0
    got = F.conv2d(x, delta_weight(up, down, 2.0), padding=1)
    assert delta_weight(up, down).shape == (7, 5, 3, 3)
    assert torch.allclose(got, ref, atol=1e-4)


def test_conv1x1_delta_shape_and_value():
    down, up = torch.randn(4, 5, 1, 1), torch.randn(7, 4, 1, 1)
    x = torch.randn(2, 5, 4, 4)
    got = F.conv2d(x, delta_weight(up, down))
    assert got.shape == (2, 7, 4, 4)
    assert torch.allclose(got, F.conv2d(F.conv2d(x, down), up), atol=1e-5)

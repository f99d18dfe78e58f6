"""kohya's resolution order for options that name a class (issue #18, class 3).

kohya: ``get_scheduler_fix`` resolves a ``--lr_scheduler_type`` without a dot in ``torch.optim.lr_scheduler``
and a dotted one by importing the module part; ``get_optimizer`` matches its own names case-insensitively,
then a bare name in ``torch.optim`` (case-sensitive), then a dotted ``module.Class``.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from library.errors import UserError
from sd_train.class_names import resolve_class, resolve_optimizer
from sd_train.optim import build_optimizer, build_scheduler


def _params():
    return [torch.nn.Parameter(torch.zeros(2))]


@pytest.mark.parametrize("value, expected", [
    ("CosineAnnealingLR", torch.optim.lr_scheduler.CosineAnnealingLR),  # kohya docs example
    ("torch.optim.lr_scheduler.OneCycleLR", torch.optim.lr_scheduler.OneCycleLR),
    ("", None),
])
def test_lr_scheduler_type_resolution(value, expected):
    assert resolve_class("lr_scheduler_type", value) is expected


def test_bare_scheduler_class_builds_with_its_args():
    """``lr_scheduler_type = "CosineAnnealingLR"`` + ``lr_scheduler_args = ["T_max=100"]`` (kohya's docs): the
    LR curve is torch's own CosineAnnealingLR (was "Empty module name")."""
    opt, _ = build_optimizer(_params(), "AdamW", 1.0, None)
    sched = build_scheduler(opt, "constant", num_training_steps=10, scheduler_type="CosineAnnealingLR",
                            scheduler_args=["T_max=100", "eta_min=0.1"])
    ref_opt = torch.optim.AdamW(_params(), lr=1.0)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=100, eta_min=0.1)
    assert type(sched) is torch.optim.lr_scheduler.CosineAnnealingLR
    for _ in range(30):
        opt.step(), sched.step(), ref_opt.step(), ref.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] < 0.9


def test_scheduler_type_with_warmup_is_refused_as_kohya():
    opt, _ = build_optimizer(_params(), "AdamW", 1.0, None)
    with pytest.raises(UserError, match="--lr_scheduler_type CosineAnnealingLR cannot use --lr_warmup_steps"):
        build_scheduler(opt, "constant", num_training_steps=10, num_warmup_steps=5, scheduler_type="CosineAnnealingLR",
                        scheduler_args=["T_max=100"])


def test_schedule_free_optimizer_wins_over_a_scheduler_class():
    """kohya returns its dummy scheduler for a schedule-free optimizer before looking at --lr_scheduler_type."""
    opt, _ = build_optimizer(_params(), "AdamWScheduleFree", 1.0, None)
    sched = build_scheduler(opt, "constant", num_training_steps=10, scheduler_type="CosineAnnealingLR",
                            scheduler_args=["T_max=2"])
    for _ in range(5):
        opt.step(), sched.step()
    assert sched.get_last_lr() == [1.0]


@pytest.mark.parametrize("value, cls, nesterov", [
    ("", torch.optim.AdamW, False),
    ("adamw", torch.optim.AdamW, False),
    ("AdaFactor", "Adafactor", False),  # as the WeThinkIn SDXL LoRA guide writes it
    ("SGDNesterov", torch.optim.SGD, True),
    ("RAdam", torch.optim.RAdam, False),  # a torch.optim class, case-sensitive
    ("prodigyopt.Prodigy", "Prodigy", False),
    ("torch.optim.Adagrad", torch.optim.Adagrad, False),
])
def test_optimizer_resolution_order(value, cls, nesterov):
    found = resolve_optimizer(value)
    assert (found.cls if isinstance(cls, type) else found.cls.__name__) == cls and found.nesterov is nesterov


def test_dotted_optimizer_from_a_user_module(monkeypatch):
    """``LoraEasyCustomOptimizer.came.CAME`` (hollowstrawberry's XL notebook) style: module part imported."""
    package, module = types.ModuleType("LoraEasyCustomOptimizer"), types.ModuleType("LoraEasyCustomOptimizer.came")
    module.CAME = type("CAME", (torch.optim.SGD,), {"__module__": "LoraEasyCustomOptimizer.came"})
    package.came = module
    monkeypatch.setitem(sys.modules, "LoraEasyCustomOptimizer", package)
    monkeypatch.setitem(sys.modules, "LoraEasyCustomOptimizer.came", module)
    assert resolve_optimizer("LoraEasyCustomOptimizer.came.CAME").cls is module.CAME
    opt, description = build_optimizer(_params(), "LoraEasyCustomOptimizer.came.CAME", 0.1, ["momentum=0.5"])
    assert description == "LoraEasyCustomOptimizer.came.CAME(momentum=0.5)"


@pytest.mark.parametrize("option, value, message", [
    ("lr_scheduler_type", "CosineAnnealingLr",
     "--lr_scheduler_type CosineAnnealingLr: 'torch.optim.lr_scheduler' has no class 'CosineAnnealingLr' "
     "(names are case-sensitive)"),
    ("lr_scheduler_type", "LoraEasyCustomOptimizer.RexAnnealingWarmRestarts.RexAnnealingWarmRestarts",
     "--lr_scheduler_type LoraEasyCustomOptimizer.RexAnnealingWarmRestarts.RexAnnealingWarmRestarts: cannot import "
     "it (No module named 'LoraEasyCustomOptimizer'); pip install LoraEasyCustomOptimizer, or fix the name"),
    ("optimizer_type", "adamW8bitt", "--optimizer_type adamW8bitt: unknown optimizer; use a kohya name"),
    ("optimizer_type", "radam", "--optimizer_type radam: unknown optimizer"),  # torch.optim is case-sensitive
    ("network_module", "networks.loraa", "--network_module networks.loraa: cannot import it"),
])
def test_unresolvable_names_are_one_line(option, value, message):
    with pytest.raises(UserError) as err:
        resolve_class(option, value)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_network_module_resolves_the_plugin():
    assert resolve_class("network_module", "networks.lora").__name__ == "networks.lora"
    assert resolve_class("network_module", None).__name__ == "networks.lora"  # sd-train: unset = networks.lora
    with pytest.raises(ValueError):
        resolve_class("lr_scheduler", "cosine")

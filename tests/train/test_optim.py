"""sd_train.optim: optimizers by kohya name, ss_optimizer strings and LR curves."""

from __future__ import annotations

import math

import pytest
import torch

from library.errors import UserError
from sd_train.optim import build_optimizer, build_scheduler, parse_kv_args, resolve_lr_scheduler

LR = 1e-3
N = 100


def _params():
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize("name, args, expected", [
    ("", ["weight_decay=0.01"], "torch.optim.adamw.AdamW(weight_decay=0.01)"),
    ("AdamW", None, "torch.optim.adamw.AdamW"),
    ("adamw", ["betas=(0.9,0.99)", "eps=1e-8"], "torch.optim.adamw.AdamW(betas=(0.9, 0.99),eps=1e-08)"),
    ("SGDNesterov", None, "torch.optim.sgd.SGD(momentum=0.9)"),
    ("Lion", None, "lion_pytorch.lion_pytorch.Lion"),
    ("Prodigy", ["d_coef=2.0"], "prodigyopt.prodigy.Prodigy(d_coef=2.0)"),
    ("DAdaptation", None, "dadaptation.experimental.dadapt_adam_preprint.DAdaptAdamPreprint"),
    ("DAdaptAdam", None, "dadaptation.dadapt_adam.DAdaptAdam"),
    ("DAdaptAdanIP", None, "dadaptation.experimental.dadapt_adan_ip.DAdaptAdanIP"),
    ("AdamWScheduleFree", None, "schedulefree.adamw_schedulefree.AdamWScheduleFree"),
    ("torch.optim.Adam", None, "torch.optim.adam.Adam"),
    ("RMSprop", None, "torch.optim.rmsprop.RMSprop"),
])
def test_optimizer_names_and_ss_string(name, args, expected):
    opt, description = build_optimizer(_params(), name, LR, args)
    assert description == expected
    assert opt.param_groups[0]["lr"] == LR


def test_sgd_nesterov_flags_and_groups():
    groups = [{"params": _params(), "lr": 1e-4}, {"params": _params()}]
    opt, _ = build_optimizer(groups, "sgdnesterov", LR, ["momentum=0.5"])
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["nesterov"] is True and opt.param_groups[0]["momentum"] == 0.5
    assert [g["lr"] for g in opt.param_groups] == [1e-4, LR]


def test_adafactor_relative_step_rules():
    opt, description = build_optimizer(_params(), "Adafactor", LR, None)
    assert description == "transformers.optimization.Adafactor(relative_step=True)"
    assert opt.defaults["lr"] is None and opt.defaults["relative_step"] is True
    _, description = build_optimizer(_params(), "adafactor", LR, ["relative_step=False", "warmup_init=True"])
    assert description == "transformers.optimization.Adafactor(relative_step=True,warmup_init=True)"
    opt, _ = build_optimizer(_params(), "Adafactor", LR, ["relative_step=False", "scale_parameter=False"])
    assert opt.defaults["lr"] == LR
    assert resolve_lr_scheduler("Adafactor", None, "constant", LR) == f"adafactor:{LR}"
    assert resolve_lr_scheduler("Adafactor", ["relative_step=False"], "cosine", LR) == "cosine"
    assert resolve_lr_scheduler("AdamW", None, "cosine", LR) == "cosine"


def test_adafactor_scheduler_reports_initial_lr():
    opt, _ = build_optimizer(_params(), "Adafactor", LR, None)
    sched = build_scheduler(opt, f"adafactor:{LR}", num_training_steps=N)
    assert sched.get_lr() == [LR]


def test_schedulefree_is_in_train_mode_with_noop_scheduler():
    opt, _ = build_optimizer(_params(), "RAdamScheduleFree", LR, None)
    assert opt.param_groups[0]["train_mode"] is True
    sched = build_scheduler(opt, "cosine", num_training_steps=N, num_warmup_steps=10)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == LR


def test_missing_package_names_pip_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # absent, also on GPU machines that have it
    with pytest.raises(UserError, match="pip install bitsandbytes"):
        build_optimizer(_params(), "AdamW8bit", LR, None)


def test_unknown_optimizer():
    with pytest.raises(UserError, match="unknown optimizer"):
        build_optimizer(_params(), "NoSuchOpt", LR, None)


def test_parse_kv_args():
    assert parse_kv_args(["a=1", "b=(0.9,0.99)", "c='x=y'", "d=True"], "--x") == {
        "a": 1, "b": (0.9, 0.99), "c": "x=y", "d": True}
    with pytest.raises(UserError, match="expected key=value"):
        parse_kv_args(["nokey"], "--optimizer_args")
    with pytest.raises(UserError, match="strings need quotes"):
        parse_kv_args(["mode=fast"], "--optimizer_args")


def _lrs(name, steps, **kw):
    opt = torch.optim.SGD(_params(), lr=LR)
    sched = build_scheduler(opt, name, num_training_steps=N, **kw)
    out = []
    for s in range(steps + 1):
        if s in POINTS:
            out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


POINTS = [int(i * N / 19) for i in range(20)][:19] + [N - 1]
W = 10


def _cos(p, cycles=0.5):
    return 0.5 * (1 + math.cos(math.pi * 2 * cycles * p))


def _warm(s, f):
    return s / W if s < W else f((s - W) / (N - W))


CURVES = {
    "constant_with_warmup": (dict(num_warmup_steps=W), lambda s: _warm(s, lambda p: 1.0)),
    "linear": (dict(num_warmup_steps=W), lambda s: _warm(s, lambda p: 1 - p)),
    "cosine": (dict(num_warmup_steps=W), lambda s: _warm(s, _cos)),
    "cosine_with_restarts": (dict(num_warmup_steps=W, num_cycles=3),
                             lambda s: _warm(s, lambda p: 0.5 * (1 + math.cos(math.pi * ((3 * p) % 1.0))))),
    "polynomial": (dict(num_warmup_steps=W, power=2.0),
                   lambda s: _warm(s, lambda p: ((LR - 1e-7) * (1 - p) ** 2 + 1e-7) / LR)),
    "cosine_with_min_lr": (dict(num_warmup_steps=W, min_lr_ratio=0.1),
                           lambda s: _warm(s, lambda p: _cos(p) * 0.9 + 0.1)),
    "inverse_sqrt": (dict(num_warmup_steps=W), lambda s: s / W if s < W else 1 / math.sqrt(s / W)),
}


@pytest.mark.parametrize("name", sorted(CURVES))
def test_scheduler_curves_match_closed_form(name):
    kwargs, curve = CURVES[name]
    got = _lrs(name, N - 1, **kwargs)
    assert len(got) == 20
    assert got == pytest.approx([LR * curve(s) for s in POINTS], rel=1e-6, abs=1e-12)


def test_constant_and_ratio_warmup_and_processes():
    assert _lrs("constant", N - 1) == [LR] * 20
    # 0.05 of N × P = 200 scheduler steps -> 10 warm-up steps
    opt = torch.optim.SGD(_params(), lr=LR)
    sched = build_scheduler(opt, "linear", num_training_steps=N, num_warmup_steps=0.05, num_processes=2)
    lrs = []
    for _ in range(200):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[5] == pytest.approx(LR * 0.5) and lrs[10] == pytest.approx(LR)
    assert lrs[105] == pytest.approx(LR * (200 - 105) / 190)


def test_warmup_stable_decay_curve():
    got = _lrs("warmup_stable_decay", N - 1, num_warmup_steps=W, num_decay_steps=0.2, min_lr_ratio=0.1)

    def curve(s):
        if s < W:
            return (s / W) * 0.9 + 0.1
        if s < 80:
            return 1.0
        return _cos((s - 80) / 20) * 0.9 + 0.1

    assert got == pytest.approx([LR * curve(s) for s in POINTS], rel=1e-6)


def test_constant_with_warmup_is_an_error_and_custom_type():
    opt = torch.optim.SGD(_params(), lr=LR)
    with pytest.raises(UserError, match="constant_with_warmup"):
        build_scheduler(opt, "constant", num_training_steps=N, num_warmup_steps=5)
    with pytest.raises(UserError, match="unknown"):
        build_scheduler(opt, "nope", num_training_steps=N)
    sched = build_scheduler(opt, "constant", num_training_steps=N, scheduler_type="torch.optim.lr_scheduler.StepLR",
                            scheduler_args=["step_size=2", "gamma=0.5"])
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR) and sched.gamma == 0.5
    with pytest.raises(UserError, match="--lr_warmup_steps"):
        build_scheduler(opt, "constant", num_training_steps=N, num_warmup_steps=3,
                        scheduler_type="torch.optim.lr_scheduler.StepLR", scheduler_args=["step_size=2"])


def test_bad_optimizer_arguments_are_one_line():
    with pytest.raises(UserError) as err:
        build_optimizer(_params(), "AdamW", LR, ["foo=1"])
    assert str(err.value) == ("--optimizer_type AdamW: AdamW.__init__() got an unexpected keyword argument 'foo'; "
                              "check --learning_rate and --optimizer_args")
    with pytest.raises(UserError, match="^--optimizer_type Lion: .*check --learning_rate and --optimizer_args$"):
        build_optimizer(_params(), "Lion", LR, ["betas=0.9"])


def test_scheduler_arguments_are_used_or_refused():
    opt = torch.optim.SGD(_params(), lr=LR)
    with pytest.raises(UserError) as err:
        build_scheduler(opt, "cosine", num_training_steps=N, scheduler_args=["foo=1", "bar=2"])
    assert str(err.value) == ("--lr_scheduler_args bar, foo: --lr_scheduler cosine takes no such argument (only "
                              "step_rules, for piecewise_constant); use --lr_scheduler_type for a custom class")
    with pytest.raises(UserError, match="^--lr_scheduler_type torch.optim.lr_scheduler.StepLR: .*step_size"):
        build_scheduler(opt, "constant", num_training_steps=N, scheduler_type="torch.optim.lr_scheduler.StepLR")
    sched = build_scheduler(opt, "piecewise_constant", num_training_steps=N, scheduler_args=["step_rules='1:10,0.5'"])
    assert [round(sched.lr_lambdas[0](s), 3) for s in (0, 9, 10, 50)] == [1.0, 1.0, 0.5, 0.5]

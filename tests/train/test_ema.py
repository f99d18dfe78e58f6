"""--ema through the real entry point: the closed-form recurrence of the recorded weights, decay 0 and 1,
--ema_save_as, --ema_for_sampling, LyCORIS, pruning, bit-exact resume with EMA on (CPU, fp32)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from library.errors import UserError
from library.io.safetensors_io import load_file
from sd_train.ema import NetworkEma
from sd_train.sdxl_train_network import main as sdxl_main


def _args(assets, out, *extra, steps=4):
    ckpt, toml = assets
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
            "--network_module", "networks.lora", "--network_dim", "4", "--max_train_steps", str(steps),
            "--max_data_loader_n_workers", "0", "--seed", "3", "--learning_rate", "1e-2", *extra]


def _weights(path):
    tensors, meta = load_file(path)
    return {k: v.double() for k, v in tensors.items() if not k.endswith(".alpha")}, meta


@pytest.mark.parametrize("decay, every, warmup", [(0.9, 1, False), (0.95, 2, True)])
def test_ema_file_is_the_recurrence_of_the_recorded_weights(assets, tmp_path, decay, every, warmup):
    """Continue a LoRA (--network_weights: the EMA starts from it) and save the trained and EMA weights at every
    step. The EMA files equal e_s = d_s e_(s-1) + (1 - d_s) w_s from e_0 = w_0 (float64 reference) to 1e-6
    relative; the same recurrence one step late misses by > 1e-3, so an off-by-one or a wrong decay fails."""
    base = tmp_path / "base"
    assert sdxl_main(_args(assets, base, steps=2)) == 0
    out = tmp_path / "out"
    extra = ["--network_weights", str(base / "last.safetensors"), "--ema", "--ema_decay", str(decay),
             "--ema_update_every", str(every), "--ema_save_as", "both", "--save_every_n_steps", "1",
             "--output_name", "n", "--seed", "4"] + (["--ema_warmup"] if warmup else [])
    assert sdxl_main(_args(assets, out, *extra)) == 0
    raw = [_weights(base / "last.safetensors")[0]]
    raw += [_weights(out / f"n-step{s:08d}.safetensors")[0] for s in (1, 2, 3)] + [_weights(out / "n.safetensors")[0]]
    got = [_weights(out / f"n-step{s:08d}-ema.safetensors")[0] for s in (1, 2, 3)]
    got += [_weights(out / "n-ema.safetensors")[0]]
    ema, late = dict(raw[0]), dict(raw[0])
    for step in range(1, 5):
        d = min(decay, step / (9 + step)) if warmup else decay
        if step % every == 0:
            ema = {k: d * ema[k] + (1 - d) * raw[step][k] for k in ema}
            late = {k: d * late[k] + (1 - d) * raw[step - 1][k] for k in late}
        scale = max(float(v.abs().max()) for v in ema.values())
        assert max(float((got[step - 1][k] - ema[k]).abs().max()) for k in ema) < 1e-6 * scale
        if step >= every:
            assert max(float((got[step - 1][k] - late[k]).abs().max()) for k in ema) > 1e-3 * scale
    meta = _weights(out / "n-ema.safetensors")[1]
    assert (meta["ss_ema_decay"], meta["ss_ema_update_every"], meta["ss_ema_warmup"]) == (str(decay), str(every),
                                                                                          str(warmup))
    assert meta["ss_ema_weights"] == "True" and _weights(out / "n.safetensors")[1]["ss_ema_weights"] == "False"


def test_decay_zero_is_the_trained_weights_and_decay_one_the_start(assets, tmp_path):
    assert sdxl_main(_args(assets, tmp_path / "zero", "--ema", "--ema_decay", "0", "--ema_save_as", "both",
                           steps=2)) == 0
    raw, ema = (load_file(tmp_path / "zero" / n)[0] for n in ("last.safetensors", "last-ema.safetensors"))
    assert raw.keys() == ema.keys() and all(torch.equal(raw[k], ema[k]) for k in raw)
    assert sdxl_main(_args(assets, tmp_path / "plain", steps=2)) == 0  # --ema never changes the training itself
    plain = load_file(tmp_path / "plain" / "last.safetensors")[0]
    assert all(torch.equal(raw[k], plain[k]) for k in raw)
    assert sdxl_main(_args(assets, tmp_path / "one", "--ema", "--ema_decay", "1", steps=2)) == 0
    start = load_file(tmp_path / "one" / "last.safetensors")[0]  # main: the EMA weights, still the initial ones
    assert all(torch.equal(start[k], torch.zeros_like(start[k])) for k in start if "lora_up" in k)
    assert sorted(p.name for p in (tmp_path / "one").glob("*.safetensors")) == ["last.safetensors"]


def test_ema_for_sampling_samples_and_validates_the_ema_weights(assets, tmp_path):
    """Decay 1 keeps the EMA at the initial weights: with --ema_for_sampling the step-2 sample equals the step-0
    one and the validation loss of step 2 equals that of step 1; without, both change (a learning rate of 1 makes
    two steps visible in the tiny model's images). The trained weights are the same either way."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red square --w 64 --h 64 --s 2 --d 5 --l 4\n")
    common = ["--ema", "--ema_decay", "1", "--ema_save_as", "both", "--sample_prompts", str(prompts),
              "--sample_at_first", "--sample_every_n_steps", "2", "--validation_split", "0.2",
              "--validate_every_n_steps", "1", "--learning_rate", "1"]
    images, losses = {}, {}
    for name, extra in (("ema", ["--ema_for_sampling"]), ("raw", [])):
        logs = tmp_path / f"logs_{name}"
        assert sdxl_main(_args(assets, tmp_path / name, *common, *extra, "--logging_dir", str(logs), steps=2)) == 0
        images[name] = [hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted((tmp_path / name / "sample").glob("*.png"))]
        events = EventAccumulator(str(next(logs.rglob("events.out.tfevents.*")).parent))
        events.Reload()
        losses[name] = [e.value for e in events.Scalars("loss/validation/step_average")]
    assert len(images["ema"]) == 2 and images["ema"][0] == images["ema"][1] == images["raw"][0]
    assert images["raw"][1] != images["raw"][0]
    assert len(losses["ema"]) == 2 and losses["ema"][0] == losses["ema"][1]
    assert losses["raw"][0] != losses["raw"][1]
    a, b = (load_file(tmp_path / n / "last.safetensors")[0] for n in ("ema", "raw"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lycoris_ema_and_pruned_siblings(assets, tmp_path):
    out = tmp_path / "out"
    assert sdxl_main(_args(assets, out, "--network_module", "lycoris.kohya", "--network_args", "algo=locon",
                           "preset=attn-mlp", "--ema", "--ema_decay", "0.5", "--ema_save_as", "both",
                           "--save_every_n_steps", "1", "--save_last_n_steps", "1", steps=4)) == 0
    assert sorted(p.name for p in out.glob("*.safetensors")) == [  # step 1 and its EMA sibling pruned at step 3
        "at-step00000002-ema.safetensors", "at-step00000002.safetensors", "at-step00000003-ema.safetensors",
        "at-step00000003.safetensors", "last-ema.safetensors", "last.safetensors"]
    (raw, meta), (ema, _) = load_file(out / "last.safetensors"), load_file(out / "last-ema.safetensors")
    assert meta["ss_network_module"] == "lycoris.kohya" and raw.keys() == ema.keys()
    changed = [k for k in raw if not torch.equal(raw[k], ema[k])]
    assert changed and all(k.startswith(("lora_te", "lora_unet")) for k in changed)


def test_resume_is_bit_exact_with_ema(assets, tmp_path, deterministic):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    ema = ["--ema", "--ema_decay", "0.8", "--ema_warmup", "--ema_save_as", "both", "--save_state_on_train_end"]
    assert sdxl_main(_args(assets, full, *ema, "--save_every_n_steps", "2", "--save_state")) == 0
    state = full / "at-step00000002-state"
    assert (state / "ema.safetensors").is_file()
    assert sdxl_main(_args(assets, resumed, *ema, "--resume", str(state))) == 0
    for name in ("last.safetensors", "last-ema.safetensors", "last-state/ema.safetensors",
                 "last-state/model.safetensors"):
        a, b = load_file(full / name)[0], load_file(resumed / name)[0]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    raw, ema_w = load_file(full / "last.safetensors")[0], load_file(full / "last-ema.safetensors")[0]
    assert any(not torch.equal(raw[k], ema_w[k]) for k in raw)


def test_resume_without_ema_state_starts_it_from_the_resumed_weights(assets, tmp_path, capsys):
    plain = tmp_path / "plain"
    assert sdxl_main(_args(assets, plain, "--save_state_on_train_end", steps=2)) == 0
    out = tmp_path / "out"
    assert sdxl_main(_args(assets, out, "--ema", "--ema_decay", "1", "--resume", str(plain / "last-state"),
                           steps=3)) == 0
    assert f"--resume {plain / 'last-state'} has no ema.safetensors" in capsys.readouterr().err
    a, b = load_file(plain / "last.safetensors")[0], load_file(out / "last.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ema_unit_decay_ramp_and_state_mismatch(tmp_path):
    p = torch.nn.Parameter(torch.ones(3))
    ema = NetworkEma([("w", p)], decay=0.999, every=1, warmup=True, on_cpu=True)
    assert [round(ema.decay_at(s), 6) for s in (1, 2, 91)] == [0.1, round(2 / 11, 6), 0.91]
    assert ema.decay_at(100000) == 0.999
    ema.save(tmp_path / "ema.safetensors")
    other = NetworkEma([("w", torch.nn.Parameter(torch.ones(4)))], 0.9, 1, False, False)
    with pytest.raises(UserError, match="the EMA weights do not fit this network"):
        other.load(tmp_path / "ema.safetensors")
    with ema.applied():
        p.data.add_(1)  # whatever happens inside, the trained weights come back bitwise
    assert torch.equal(p.detach(), torch.ones(3))

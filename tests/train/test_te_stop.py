"""--stop_text_encoder_training / --train_text_encoder_frac: the text-encoder network freezes after the exact
step (bitwise, optimizer state kept), its outputs are reused from then on, resume across the stop is bit-exact."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from library.io.safetensors_io import load_file
from sd_train import te_stop
from sd_train.distributed import average_gradients
from sd_train.families.sdxl import SdxlFamily
from sd_train.sdxl_train_network import main as sdxl_main


def _args(assets, out, *extra, steps=4):
    ckpt, toml = assets
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
            "--network_module", "networks.lora", "--network_dim", "4", "--max_train_steps", str(steps),
            "--max_data_loader_n_workers", "0", "--seed", "5", "--learning_rate", "1e-2", *extra]


def _split(path):
    tensors, meta = load_file(path)
    return {k: v for k, v in tensors.items() if k.startswith("lora_te")}, \
        {k: v for k, v in tensors.items() if k.startswith("lora_unet")}, meta


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("flags, reuse", [
    (["--stop_text_encoder_training", "2"], "its outputs are cached from now on (one encode per caption)"),
    (["--train_text_encoder_frac", "0.4", "--shuffle_caption"],  # ceil(0.4 × 4) = 2
     "its outputs are still computed every step (caption randomness: shuffle_caption)"),
])
def test_text_encoder_freezes_after_the_exact_step(assets, tmp_path, capsys, flags, reuse):
    out = tmp_path / "out"
    assert sdxl_main(_args(assets, out, *flags, "--save_every_n_steps", "1", "--save_state")) == 0
    steps = [_split(out / f"at-step{s:08d}.safetensors") for s in (1, 2, 3)] + [_split(out / "last.safetensors")]
    te, unet = [s[0] for s in steps], [s[1] for s in steps]
    assert not _same(te[0], te[1])  # trained through step 2 ...
    assert _same(te[1], te[2]) and _same(te[1], te[3])  # ... and not a bit after it
    assert not _same(unet[1], unet[2]) and not _same(unet[2], unet[3])
    assert steps[3][2]["ss_stop_text_encoder_training"] == "2"
    assert "text-encoder network frozen after step 2 (72 parameters); " + reuse in capsys.readouterr().err
    at2 = torch.load(out / "at-step00000002-state" / "optimizer.bin", weights_only=True)["state"]
    last = torch.load(out / "last-state" / "optimizer.bin", weights_only=True)["state"]
    n_te = 2 * len({k.split(".")[0] for k in te[0]})  # lora_down + lora_up per module; the TE group comes first
    te_state = [i for i in at2 if i < n_te]  # (the last TE1 layer feeds nothing in SDXL: no gradient, no state)
    assert te_state and te_state == [i for i in last if i < n_te]
    assert all(torch.equal(at2[i][k], last[i][k]) for i in te_state for k in at2[i])  # its moments stay
    assert not all(torch.equal(at2[i]["exp_avg"], last[i]["exp_avg"]) for i in range(n_te, len(at2)))


def test_outputs_are_encoded_once_per_caption_after_the_stop(assets, tmp_path, monkeypatch):
    """After the stop each caption is encoded once, alone; the run then matches one that keeps encoding whole
    batches to float32 rounding (a caption paired with the wrong output moves the weights by far more)."""
    calls, encode, freeze = [], SdxlFamily.encode_captions, te_stop.TextEncoderStop.freeze

    def spy(self, text_encoders, captions):
        calls.append(tuple(captions))
        return encode(self, text_encoders, captions)

    monkeypatch.setattr(SdxlFamily, "encode_captions", spy)
    monkeypatch.setattr(te_stop.TextEncoderStop, "freeze", lambda *a: (calls.append("frozen"), freeze(*a)))
    assert sdxl_main(_args(assets, tmp_path / "reused", "--stop_text_encoder_training", "1", steps=6)) == 0
    after = calls[calls.index("frozen") + 1:]
    assert calls.index("frozen") == 1 and after and all(len(c) == 1 for c in after)
    assert len(after) == len(set(after)) <= 8  # 8 captions in the sample set
    monkeypatch.setattr(te_stop, "_not_cacheable", lambda trainer: "test")
    assert sdxl_main(_args(assets, tmp_path / "encoded", "--stop_text_encoder_training", "1", steps=6)) == 0
    a, b = (load_file(tmp_path / n / "last.safetensors")[0] for n in ("reused", "encoded"))
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


@pytest.mark.parametrize("resume_at", [1, 3])
def test_resume_across_the_stop_is_bit_exact(assets, tmp_path, resume_at):
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        full, resumed = tmp_path / "full", tmp_path / "resumed"
        stop = ["--stop_text_encoder_training", "2", "--save_state_on_train_end"]
        assert sdxl_main(_args(assets, full, *stop, "--save_every_n_steps", "1", "--save_state", steps=5)) == 0
        state = full / f"at-step{resume_at:08d}-state"
        assert sdxl_main(_args(assets, resumed, *stop, "--resume", str(state), steps=5)) == 0
    finally:
        torch.use_deterministic_algorithms(before)
    for name in ("last.safetensors", "last-state/model.safetensors"):
        assert _same(load_file(full / name)[0], load_file(resumed / name)[0]), name


def test_stop_step_rounds_up_like_the_kohya_ss_gui():
    assert te_stop.stop_step(None, 0.07, 700) == 49  # 0.07 × 700 = 49.000…01 in floating point
    assert [te_stop.stop_step(None, f, 10) for f in (0.25, 0.3, 0.01, 1.0)] == [3, 3, 1, 10]
    assert te_stop.stop_step(7, None, 10) == 7 and te_stop.stop_step(None, None, 10) is None


def test_frozen_parameters_are_left_out_of_gradient_averaging():
    live, frozen = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2), requires_grad=False)
    live.grad = torch.full((2,), 4.0)
    acc = SimpleNamespace(num_processes=2, reduce=lambda t, reduction: t / 2)
    average_gradients([frozen, live], acc)
    assert frozen.grad is None and torch.equal(live.grad, torch.full((2,), 2.0))


def test_stop_and_ema_beside_pivotal_tuning(assets, tmp_path, capsys):
    """The text-encoder LoRA stops after step 1 while the new tokens' rows train through step 3 (they keep the
    text encoders' gradients, so outputs are not reused); the EMA covers the LoRA only, and a resume after the
    rows stopped is bit-exact."""
    piv = ["--train_text_encoder_ti", "--token_abstraction", "sks", "--train_text_encoder_ti_frac", "0.75",
           "--stop_text_encoder_training", "1", "--ema", "--ema_decay", "0.5", "--ema_save_as", "both",
           "--save_state_on_train_end"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert sdxl_main(_args(assets, full, *piv, "--save_every_n_steps", "1", "--save_state")) == 0
    assert "its outputs are still computed every step (new token embeddings train" in capsys.readouterr().err
    te1, te_last = _split(full / "at-step00000001.safetensors")[0], _split(full / "last.safetensors")[0]
    assert _same(te1, te_last)
    rows = [load_file(full / f"at-step{s:08d}_emb.safetensors")[0] for s in (1, 2)]
    assert not _same(*rows)
    assert load_file(full / "last-ema.safetensors")[0].keys() == load_file(full / "last.safetensors")[0].keys()
    assert sdxl_main(_args(assets, resumed, *piv, "--resume", str(full / "at-step00000003-state"))) == 0
    for name in ("last.safetensors", "last-ema.safetensors", "last_emb.safetensors"):
        assert _same(load_file(full / name)[0], load_file(resumed / name)[0]), name

"""The pieces of the plan and the summary: LR preview, save/sample cadence, size estimate, ETA, trigger words,
A1111 hash (pure functions; the end-to-end checks are in test_narration.py and tests/dataset)."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest
import torch

from library.io.safetensors_io import data_section_sha256, read_header
from library.lora.estimate import estimate_lora, header_shapes
from sd_train import eta
from sd_train.options import TrainOptions
from sd_train.plan import build_plan
from sd_train.plan_lr import preview_lr
from sd_train.summary import a1111_hash, trigger_words


def _opts(**changes):
    return TrainOptions().replace(**changes)


def test_lr_preview_is_the_lr_each_step_uses():
    """diffusers' linear schedule: step k uses lr·(k-1)/W during warm-up, then decays to lr/(T-W) at step T."""
    o = _opts(learning_rate=1e-3, lr_scheduler="linear", lr_warmup_steps=10, text_encoder_lr=[5e-4]).optimizer
    p = preview_lr(o, 100)
    assert p.warmup_steps == 10
    start, peak, at, end = p.groups["unet"]
    assert (start, at) == (0.0, 11) and peak == pytest.approx(1e-3) and end == pytest.approx(1e-3 / 90)
    assert p.groups["textencoder"][1] == pytest.approx(5e-4)


def test_lr_preview_counts_scheduler_steps_of_every_process():
    """accelerate steps the scheduler once per process: a 10-step warm-up is 5 optimizer steps on 2."""
    o = _opts(learning_rate=1e-3, lr_scheduler="linear", lr_warmup_steps=10).optimizer
    assert preview_lr(o, 100, num_processes=2).groups["unet"][2] == 6


@pytest.mark.parametrize("optimizer, note", [("AdamWScheduleFree", "schedule-free optimizer"),
                                             ("Adafactor", "Adafactor relative step"),
                                             ("Prodigy", "adaptive optimizer")])
def test_lr_preview_notes(optimizer, note):
    p = preview_lr(_opts(optimizer_type=optimizer, learning_rate=1.0).optimizer, 10)
    assert p.note.startswith(note)


def _report(batch_size=2, samples=8):
    subset = {"image_dir": "/d/10_sks dog", "metadata_file": None, "kind": "DB", "is_reg": False,
              "class_tokens": "sks dog", "img_count": samples // 2, "num_repeats": 2}
    return {"datasets": [{"num_samples": samples, "batch_size": batch_size, "subsets": [subset],
                          "resolution": [64, 64]}], "validation": []}


def test_plan_cadence_and_counts(tmp_path):
    family = SimpleNamespace(name="sd1", base_model_version=lambda: "sd_v1", embeddings_only=False)
    opts = _opts(max_train_epochs=5, gradient_accumulation_steps=2, save_every_n_epochs=2, save_every_n_steps=4,
                 sample_prompts="p.txt", sample_every_n_epochs=2, sample_at_first=True, output_name="x",
                 output_dir=str(tmp_path), pretrained_model_name_or_path=str(tmp_path / "missing.safetensors"))
    plan = build_plan(opts, _report(), batches=7, num_processes=1, family=family, num_prompts=3)
    assert (plan.steps_per_epoch, plan.num_epochs, plan.max_train_steps) == (4, 5, 20)
    assert plan.save_epochs == [2, 4] and plan.save_steps == [4, 8, 12, 16]
    assert plan.sample_times == 1 + 2 and plan.estimate is None
    text = "\n".join(plan.lines)
    assert "7 batches ÷ 1 process(es) ÷ accumulation 2 → 4 optimizer steps per epoch; 5 epochs, 20" in text
    assert "3 prompt(s) every 2 epoch(s) and before the first step: 9 images" in text
    assert "(not a local file: fetched at load)" in text
    partial = build_plan(_opts(max_train_steps=10, sample_prompts="p.txt", sample_every_n_epochs=1), _report(), 4,
                         1, family, num_prompts=2)  # 4 steps per epoch: epoch 3 is cut short, no samples at its end
    assert (partial.num_epochs, partial.sample_times) == (3, 2)
    ratio = build_plan(_opts(max_train_epochs=9, save_n_epoch_ratio=3), _report(), 7, 1, family)
    assert ratio.every_epochs == 3 and ratio.save_epochs == [3, 6]


def test_size_estimate_matches_a_saved_sd15_locon(tmp_path):
    """Conv modules, text encoder and SD1 naming: the estimate is within 3 % of the file networks.lora writes."""
    from sd_train.families.sd import SdFamily
    from sd_train.network_host import NetworkHost
    from tools.make_tiny_model import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint("sd15", tmp_path / "sd15.safetensors")
    models = SdFamily().load(str(ckpt))
    host = NetworkHost.load("networks.lora")
    host.create_network(1.0, 8, 4.0, models.vae, models.text_encoders[0], models.unet, None,
                        ["conv_dim=4", "conv_alpha=1"])
    host.network.apply_to(models.text_encoders[0], models.unet, True, True)
    out = tmp_path / "l.safetensors"
    meta = {"ss_note": "x" * 3000}
    host.save(str(out), torch.float16, meta)
    est = estimate_lora(header_shapes(str(ckpt)), "sd1", 8, 4, bytes_per_value=2, metadata_bytes=3020)
    assert est.modules == len({k.split(".")[0] for k in read_header(out)[0]})
    assert abs(est.file_bytes / out.stat().st_size - 1) < 0.03


def test_eta_arithmetic():
    r = eta.Remaining(steps=10, step_seconds=2.0, saves=2, save_seconds=0.5, images=4, image_seconds=1.5)
    assert r.total == 10 * 2.0 + 2 * 0.5 + 4 * 1.5
    assert r.describe() == "10 steps × 2.00 s + 2 saves × 0.5 s + 4 sample images × 1.5 s = 27 s"
    # a 1.2 s step of 2 images ≈ 3 passes each; 20 sampling steps × 2 (guidance) at 4× the pixels
    assert eta.sample_image_seconds(1.2, 2, 64 * 64, 128 * 128, 20) == pytest.approx(20 * 2 * 0.2 * 4)


def test_trigger_words_are_class_tokens_then_tags_of_most_images():
    report = _report()
    report["datasets"][0]["subsets"].append({"image_dir": "/d/1_dog", "metadata_file": None, "kind": "DB",
                                             "is_reg": True, "class_tokens": "dog", "img_count": 50,
                                             "num_repeats": 1})
    report["tag_frequency"] = {"10_sks dog": {"sks dog": 4, "grass": 2, "beach": 1}, "1_dog": {"dog": 50}}
    assert trigger_words(report) == ["sks dog", "grass"]


def test_a1111_hash(tmp_path):
    from library.io.safetensors_io import save_lora_file

    st = tmp_path / "a.safetensors"
    save_lora_file({"x.lora_down.weight": torch.ones(2, 3)}, st, {"ss_a": "1"})
    assert a1111_hash(st) == data_section_sha256(st)[:12] == read_header(st)[1]["sshs_model_hash"][:12]
    pt = tmp_path / "a.pt"
    pt.write_bytes(b"0123")
    assert a1111_hash(pt) == hashlib.sha256(b"0123").hexdigest()[:12]

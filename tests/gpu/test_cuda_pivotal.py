"""CUDA pivotal tuning and textual inversion on the tiny SDXL (skipped without CUDA, like the rest of tests/gpu).

On CUDA the text encoders are cast to the mixed-precision dtype while the new rows stay float32 parameters
on the GPU: the embedding file is finite, the rows moved, and every original row of the (cast) table is still
the checkpoint's value.
"""

from __future__ import annotations

import pytest
import torch

from library.checkpoint.io import load_models
from library.io.safetensors_io import load_file

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_pivotal_rows_train_in_fp32_beside_half_precision_text_encoders(train_sdxl, tiny_sdxl, precision):
    run = train_sdxl("--mixed_precision", precision, "--train_text_encoder_ti", "--token_abstraction", "sks",
                     "--train_text_encoder_ti_frac", "1.0")
    emb, _ = load_file(run.out / "last_emb.safetensors")
    assert {k: tuple(v.shape) for k, v in emb.items()} == {"clip_l": (2, 32), "clip_g": (2, 32)}
    assert all(bool(torch.isfinite(v).all()) for v in emb.values())
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    base = load_models(tiny_sdxl[0]).text_encoders
    for te, ref in zip(run.trainer.models.text_encoders, base):
        table = te.get_input_embeddings()
        assert table.added.dtype == torch.float32 and table.added.device.type == "cuda"
        assert table.weight.dtype == dtype
        assert torch.equal(table.weight.cpu(), ref.get_input_embeddings().weight.to(dtype))
    assert run.trainer.guard.skipped_total == 0


def test_textual_inversion_under_full_bf16(tiny_sdxl, tmp_path):
    from sd_train.sdxl_train_textual_inversion import main

    ckpt, toml = tiny_sdxl
    out = tmp_path / "ti"
    assert main(["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir",
                 str(out), "--max_train_steps", "3", "--max_data_loader_n_workers", "0", "--seed", "11",
                 "--learning_rate", "1e-2", "--token_string", "mytok", "--num_vectors_per_token", "2",
                 "--mixed_precision", "bf16", "--full_bf16", "--save_model_as", "safetensors"]) == 0
    emb, _ = load_file(out / "mytok.safetensors")
    assert {k: tuple(v.shape) for k, v in emb.items()} == {"clip_l": (2, 32), "clip_g": (2, 32)}
    assert all(bool(torch.isfinite(v.float()).all()) for v in emb.values())

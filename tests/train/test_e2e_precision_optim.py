"""End-to-end: bf16 autocast and every optimizer that runs on a CPU train and save a finite LoRA."""

from __future__ import annotations

import pytest
import torch

from library.io.safetensors_io import load_file
from sd_train.sdxl_train_network import main as sdxl_main


def _run(assets, out, *extra):
    ckpt, toml = assets
    args = ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml),
            "--output_dir", str(out), "--network_module", "networks.lora", "--network_dim", "4",
            "--max_train_steps", "2", "--max_data_loader_n_workers", "0", "--seed", "3",
            "--network_train_unet_only", "--cache_latents", *extra]
    assert sdxl_main(args) == 0
    weights, meta = load_file(out / "last.safetensors")
    assert all(bool(torch.isfinite(v).all()) for v in weights.values())
    ups = [v for k, v in weights.items() if k.endswith("lora_up.weight")]
    assert any(bool(u.abs().sum() > 0) for u in ups), "the optimizer never moved the LoRA"
    return weights, meta


def test_bf16_autocast_with_bf16_save(assets, tmp_path):
    weights, meta = _run(assets, tmp_path / "o", "--mixed_precision", "bf16", "--save_precision", "bf16",
                         "--learning_rate", "1e-3")
    assert meta["ss_mixed_precision"] == "bf16"
    assert {v.dtype for v in weights.values()} == {torch.bfloat16}


def test_full_bf16_network(assets, tmp_path):
    weights, _ = _run(assets, tmp_path / "o", "--mixed_precision", "bf16", "--full_bf16",
                      "--learning_rate", "1e-3")
    assert {v.dtype for k, v in weights.items() if k.endswith(".weight")} == {torch.bfloat16}


@pytest.mark.parametrize("optimizer, lr, extra, cls", [
    ("AdamW", "1e-3", ["weight_decay=0.01"], "AdamW"),
    ("Lion", "1e-4", [], "Lion"),
    ("SGDNesterov", "1e-2", [], "SGD"),
    ("Prodigy", "1.0", [], "Prodigy"),
    ("DAdaptAdam", "1.0", [], "DAdaptAdam"),
    ("Adafactor", "1e-3", ["relative_step=False", "scale_parameter=False", "warmup_init=False"], "Adafactor"),
    ("AdamWScheduleFree", "1e-3", [], "AdamWScheduleFree"),
    ("torch.optim.RMSprop", "1e-3", [], "RMSprop"),
])
def test_each_cpu_optimizer_trains(assets, tmp_path, optimizer, lr, extra, cls):
    args = ["--optimizer_type", optimizer, "--learning_rate", lr]
    if extra:
        args += ["--optimizer_args", *extra]
    _, meta = _run(assets, tmp_path / "o", *args)
    assert meta["ss_optimizer"].split("(")[0].rsplit(".", 1)[-1] == cls


def test_output_config_writes_the_file_and_does_not_train(tmp_path):
    out_toml = tmp_path / "train.toml"
    code = sdxl_main(["--output_config", "--config_file", str(out_toml), "--network_dim", "32",
                      "--network_module", "networks.lora", "--output_dir", str(tmp_path / "never")])
    assert code == 0
    text = out_toml.read_text(encoding="utf-8")
    assert 'network_module = "networks.lora"' in text and "network_dim = 32" in text
    assert "output_config =" not in text and "config_file =" not in text and not (tmp_path / "never").exists()
    assert sdxl_main(["--output_config", "--config_file", str(out_toml)]) == 1  # never overwrites


def test_disable_mmap_load_trains_the_same(assets, tmp_path):
    mapped, _ = _run(assets, tmp_path / "a", "--learning_rate", "1e-3")
    read, _ = _run(assets, tmp_path / "b", "--learning_rate", "1e-3", "--disable_mmap_load_safetensors")
    assert all(torch.equal(mapped[k], read[k]) for k in mapped)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_fp16_on_cpu_is_one_line_before_models_load(assets, tmp_path, capsys):
    ckpt, toml = assets
    code = sdxl_main(["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml),
                      "--output_dir", str(tmp_path / "o"), "--network_module", "networks.lora",
                      "--mixed_precision", "fp16", "--max_data_loader_n_workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == ("error: --mixed_precision fp16 needs a CUDA GPU (there is no fp16 autocast on the CPU); "
                       "use --mixed_precision bf16 or no")
    assert not list((tmp_path / "o").glob("*.safetensors"))


def test_torch_compile_trains_the_same_through_the_compiled_unet(assets, tmp_path, monkeypatch):
    compiled = []
    real_compile = torch.compile

    def spy(model, **kwargs):
        compiled.append((type(model).__name__, kwargs))
        return real_compile(model, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    plain, _ = _run(assets, tmp_path / "a", "--learning_rate", "1e-3")
    assert compiled == []
    fast, _ = _run(assets, tmp_path / "b", "--learning_rate", "1e-3", "--torch_compile", "--dynamo_backend", "eager")
    assert compiled == [("SdxlUNet", {"backend": "eager"})]
    assert plain.keys() == fast.keys()
    for k in plain:
        torch.testing.assert_close(fast[k], plain[k], rtol=1e-4, atol=1e-6)


def test_unregistered_compile_backend_is_one_line_before_models_load(assets, tmp_path, capsys, monkeypatch):
    import library.checkpoint.io as cio

    monkeypatch.setattr(cio, "load_models", lambda *a, **k: pytest.fail("models were loaded"))
    ckpt, toml = assets
    code = sdxl_main(["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml),
                      "--output_dir", str(tmp_path / "o"), "--network_module", "networks.lora",
                      "--torch_compile", "--dynamo_backend", "ofi", "--max_data_loader_n_workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: --dynamo_backend ofi is not available with this PyTorch install; use one of: ")
    assert "inductor" in err[-1] and "eager" in err[-1] and "ofi" not in err[-1].split("use one of: ")[1]

"""Differential output preservation (TRAINING.md §5 item 7): prior targets, batch wiring, TOML to e2e run."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from types import SimpleNamespace

import pytest
import torch

from library.dataset import BucketBatchDataset, CliDefaults, build_plan, prepare
from library.errors import UserError
from library.models.sdxl_unet import SdxlUNet, SdxlUNetConfig
from library.io.safetensors_io import load_file
from sd_train import loss as loss_lib
from sd_train import noise as noise_lib
from sd_train import objective, preservation
from sd_train.families.base import Conds
from sd_train.families.sdxl import SdxlFamily
from sd_train.network_host import NetworkHost
from sd_train.sdxl_train_network import main as sdxl_main

DOP = {"diff_output_preservation": True}


def _unet():
    torch.manual_seed(0)
    return SdxlUNet(SdxlUNetConfig.tiny()).eval().requires_grad_(False)


def _trainer(unet, ups: float = 0.05, module: str = "networks.lora", v_param: bool = False):
    """A trainer-shaped namespace with a LoRA applied to ``unet``; ``ups`` fills the lora_up weights."""
    host = NetworkHost.load(module)
    host.create_network(1.0, 4, 1.0, None, [], unet, None, None)
    host.apply_to([], unet, False, True)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for lora in host.network.unet_loras:
            lora.lora_up.weight.copy_(torch.randn(lora.lora_up.weight.shape, generator=gen) * ups)
    return SimpleNamespace(host=host, family=SdxlFamily(), models=SimpleNamespace(unet=unet), unet_fn=unet,
                           accelerator=SimpleNamespace(autocast=contextlib.nullcontext, device=torch.device("cpu")),
                           weight_dtype=torch.float32, schedule=noise_lib.make_schedule(False),
                           noise_opts=noise_lib.NoiseOptions(), train_te=False,
                           loss_opts=loss_lib.LossOptions(v_parameterization=v_param))


def _inputs(n: int = 3):
    gen = torch.Generator().manual_seed(2)
    x_t = torch.randn(n, 4, 8, 8, generator=gen)
    t = torch.tensor([10, 500, 900, 250][:n])
    conds = Conds(torch.randn(n, 77, 64, generator=gen), torch.randn(n, 32, generator=gen))
    sizes = torch.tensor([[64, 64], [80, 48], [48, 96], [64, 32]][:n])
    batch = {"custom_attributes": [DOP, {}, {**DOP, "note": "x"}, {}][:n], "captions": ["a", "b", "c", "d"][:n],
             "original_sizes_hw": sizes, "crop_top_lefts": torch.tensor([[0, 0], [8, 0], [0, 8], [0, 0]][:n]),
             "target_sizes_hw": sizes.flip(1)}
    return batch, x_t, t, conds


def test_dop_rows_get_the_base_model_prediction_and_others_keep_their_target():
    unet = _unet()
    batch, x_t, t, conds = _inputs()
    with torch.no_grad():
        base = SdxlFamily().predict(unet, x_t, t, conds, batch)  # before the LoRA exists
    trainer = _trainer(unet)
    trainer.host.set_multiplier(0.7)
    with torch.no_grad():
        patched = trainer.family.predict(unet, x_t, t, conds, batch)
    assert (patched - base).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # the LoRA really changes every row
    target = torch.randn(3, 4, 8, 8)
    original = target.clone()
    x_t.requires_grad_(True)
    conds.context.requires_grad_(True)  # as when the text encoders train: still no gradient into the prior
    out = preservation.preserve_outputs(trainer, batch, x_t, t, conds, target)
    torch.testing.assert_close(out[[0, 2]], base[[0, 2]], rtol=1e-4, atol=1e-5)
    assert torch.equal(out[1], original[1]) and torch.equal(target, original)  # input target not touched
    assert not out.requires_grad and out.grad_fn is None
    assert trainer.host.network.multiplier == 0.7
    assert {lora.multiplier for lora in trainer.host.network.unet_loras} == {0.7}


def test_only_the_dop_rows_run_through_the_unet(monkeypatch):
    trainer = _trainer(_unet())
    batch, x_t, t, conds = _inputs(4)
    seen = []
    real = trainer.family.predict

    def spy(unet, x, tt, c, b):
        seen.append((x.shape[0], tt.tolist(), c.context.shape[0], c.pooled.shape[0], b["captions"],
                     b["original_sizes_hw"].tolist(), torch.is_grad_enabled(),
                     trainer.host.network.unet_loras[0].multiplier))
        return real(unet, x, tt, c, b)

    monkeypatch.setattr(trainer.family, "predict", spy)
    preservation.preserve_outputs(trainer, batch, x_t, t, conds, torch.zeros(4, 4, 8, 8))
    assert seen == [(2, [10, 900], 2, 2, ["a", "c"], [[64, 64], [48, 96]], False, 0.0)]
    assert trainer.host.network.unet_loras[0].multiplier == 1.0


def test_no_dop_sample_is_a_free_noop():
    batch, x_t, t, conds = _inputs()
    target = torch.randn(3, 4, 8, 8)
    trainer = SimpleNamespace()  # no host, no UNet: nothing may be touched
    for attrs in (None, [{}, {"diff_output_preservation": False}, {"other": 1}]):
        b = {**batch, "custom_attributes": attrs} if attrs is not None else {"captions": batch["captions"]}
        assert preservation.preserve_outputs(trainer, b, x_t, t, conds, target) is target


def test_multiplier_is_restored_when_the_prior_fails(monkeypatch):
    trainer = _trainer(_unet())
    batch, x_t, t, conds = _inputs()
    monkeypatch.setattr(trainer.family, "predict", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        preservation.preserve_outputs(trainer, batch, x_t, t, conds, torch.zeros(3, 4, 8, 8))
    assert trainer.host.network.multiplier == 1.0
    assert {lora.multiplier for lora in trainer.host.network.unet_loras} == {1.0}


def _loss_batch(attrs):
    gen = torch.Generator().manual_seed(3)
    n = len(attrs)
    te = (torch.randn(n, 77, 32, generator=gen), torch.randn(n, 77, 32, generator=gen),
          torch.randn(n, 32, generator=gen))
    return {"latents": torch.randn(n, 4, 8, 8, generator=gen), "text_encoder_outputs": te,
            "custom_attributes": attrs, "loss_weights": torch.ones(n)}


def _batch_loss(trainer, batch):
    return objective.batch_loss(trainer, batch, torch.Generator().manual_seed(4), random.Random(4))[0]


def _value(loss: torch.Tensor) -> float:
    return float(loss.detach())


@pytest.mark.parametrize("v_param", [False, True])
def test_batch_loss_uses_the_prior_as_target(v_param):
    """A fresh LoRA (zero ups) predicts exactly the base model: all-DOP loss 0, eps or v alike; trained ups
    make it positive and it differs from the plain loss; gradients reach the LoRA through the prediction only."""
    fresh = _trainer(_unet(), ups=0.0, v_param=v_param)
    assert _value(_batch_loss(fresh, _loss_batch([DOP, DOP]))) < 1e-10
    trainer = _trainer(_unet(), v_param=v_param)
    dop_loss, plain_loss = _batch_loss(trainer, _loss_batch([DOP, DOP])), _batch_loss(trainer, _loss_batch([{}, {}]))
    assert 0 < _value(dop_loss) < _value(plain_loss)
    for p in trainer.host.get_trainable_params():
        p.requires_grad_(True)
    _batch_loss(trainer, _loss_batch([DOP, {}])).backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in trainer.host.get_trainable_params())


class _NoMultiplierNet:
    """A plugin network stand-in without ``set_multiplier``."""

    multiplier = 1.0


def test_plugin_without_set_multiplier_is_a_user_error():
    host = NetworkHost(SimpleNamespace(), "my.plugin")
    host.network = _NoMultiplierNet()
    dop = SimpleNamespace(subsets=[SimpleNamespace(spec=SimpleNamespace(custom_attributes=DOP))])
    plain = SimpleNamespace(subsets=[SimpleNamespace(spec=SimpleNamespace(custom_attributes={}))])
    assert preservation.check_support(host, [plain]) is False
    with pytest.raises(UserError, match=r"^--network_module my\.plugin: has no set_multiplier\(\); "
                                        "differential output preservation needs it$"):
        preservation.check_support(host, [plain, dop])
    batch, x_t, t, conds = _inputs()
    trainer = SimpleNamespace(host=host)
    with pytest.raises(UserError, match="set_multiplier"):
        preservation.preserve_outputs(trainer, batch, x_t, t, conds, torch.zeros(3, 4, 8, 8))


def test_check_support_keeps_the_multiplier():
    trainer = _trainer(_unet())
    trainer.host.set_multiplier(0.5)
    dop = SimpleNamespace(subsets=[SimpleNamespace(spec=SimpleNamespace(custom_attributes=DOP))])
    assert preservation.check_support(trainer.host, [dop]) is True
    assert {lora.multiplier for lora in trainer.host.network.unet_loras} == {0.5}


# --- dataset TOML -> batch -> tiny SDXL run -------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tiny_sdxl, tmp_path_factory):
    """Tiny SDXL checkpoint and the 8 sample images split into folders ``dop`` (4) and ``plain`` (4)."""
    from tools.make_sample_dataset import make_sample_dataset

    root = tmp_path_factory.mktemp("dop")
    src = make_sample_dataset(root / "sample").parent / "10_sks shape"
    for i, p in enumerate(sorted(src.glob("*.png"))):
        dest = root / ("dop" if i % 2 == 0 else "plain")
        dest.mkdir(exist_ok=True)
        shutil.copy(p, dest / p.name)
        shutil.copy(p.with_suffix(".txt"), dest / p.with_suffix(".txt").name)
    return tiny_sdxl, root


def _toml(root, path, plain_attrs: str = ""):
    path.write_text(f'[general]\ncaption_extension = ".txt"\n\n[[datasets]]\nresolution = 64\nbatch_size = 2\n'
                    'enable_bucket = true\nmin_bucket_reso = 32\nmax_bucket_reso = 128\nbucket_reso_steps = 32\n'
                    'custom_attributes = { note = "from the dataset" }\n\n'
                    f'  [[datasets.subsets]]\n  image_dir = "{(root / "dop").as_posix()}"\n'
                    '  custom_attributes = { diff_output_preservation = true }\n\n'
                    f'  [[datasets.subsets]]\n  image_dir = "{(root / "plain").as_posix()}"\n{plain_attrs}')
    return path


def test_subset_custom_attributes_reach_every_batch(assets, tmp_path):
    _, root = assets
    data = prepare(build_plan(CliDefaults(dataset_config=str(_toml(root, tmp_path / "d.toml")))), seed=0,
                   bucket_step_multiple=32, is_sdxl=True)
    ds = BucketBatchDataset(data.train, dataset_seed=1, load_images=False)
    seen = {}
    for i in range(len(ds)):
        b = ds[i]
        assert len(b["custom_attributes"]) == len(b["image_paths"])
        seen.update({p: a for p, a in zip(b["image_paths"], b["custom_attributes"])})
    assert len(seen) == 8
    for path, attrs in seen.items():  # the subset's own table replaces the dataset's (kohya fallback order)
        assert attrs == (DOP if "/dop/" in path.replace("\\", "/") else {"note": "from the dataset"})
    json.dumps(data.report())
    subsets = json.loads(data.metadata_fields()["ss_datasets"])[0]["subsets"]
    assert len(subsets) == 2 and all("custom_attributes" not in s for s in subsets)  # FORMAT.md: not written


def _args(ckpt, toml, out, *extra):
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
            "--network_module", "networks.lora", "--network_dim", "4", "--resolution", "64",
            "--max_train_steps", "2", "--max_data_loader_n_workers", "0", "--seed", "7", "--learning_rate", "1e-3",
            "--network_train_unet_only", *extra]


def test_sdxl_run_with_dop_subset_writes_a_finite_lora(assets, tmp_path, monkeypatch):
    ckpt, root = assets
    rows = []
    real = preservation.prior_prediction
    monkeypatch.setattr(preservation, "prior_prediction",
                        lambda tr, b, x, t, c, r: rows.append(list(r)) or real(tr, b, x, t, c, r))
    out = tmp_path / "out"
    assert sdxl_main(_args(ckpt, _toml(root, tmp_path / "d.toml"), out)) == 0
    assert rows and all(r for r in rows)  # the DOP samples of the two steps took the prior path
    weights, _ = load_file(out / "last.safetensors")
    assert weights and all(bool(torch.isfinite(v).all()) for v in weights.values())
    assert any(bool(v.abs().sum() > 0) for k, v in weights.items() if k.endswith("lora_up.weight"))


def test_sdxl_run_with_plugin_lacking_set_multiplier_fails_with_one_error_line(assets, tmp_path, monkeypatch, capsys):
    ckpt, root = assets
    plugin = tmp_path / "nomult_plugin.py"
    plugin.write_text("from networks import lora\n\n\nclass Net(lora.LoRANetwork):\n    set_multiplier = None\n\n\n"
                      "def create_network(*args, **kwargs):\n    net = lora.create_network(*args, **kwargs)\n"
                      "    net.__class__ = Net\n    return net\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    toml = _toml(root, tmp_path / "d.toml", plain_attrs="  custom_attributes = { diff_output_preservation = 1 }\n")
    out = tmp_path / "out"
    code = sdxl_main(_args(ckpt, toml, out, "--network_module", "nomult_plugin"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("error: --network_module nomult_plugin: has no set_multiplier(); "
                                            "differential output preservation needs it")
    assert not (out / "last.safetensors").exists()

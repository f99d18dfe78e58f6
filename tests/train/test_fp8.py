"""``--fp8_base`` / ``--fp8_base_unet``: fp8 storage of frozen Linear/Conv2d weights with per-call upcast."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from library.errors import UserError
from library.models.fp8 import compute_dtype, store_in_fp8
from library.io.safetensors_io import load_file
from sd_train.options import TrainOptions
from sd_train.options.rules import normalize, validate
from sd_train.sdxl_train_network import main as sdxl_main

FP8 = torch.float8_e4m3fn


class Toy(nn.Module):
    """Every layer kind a base model has: conv (3×3, strided, 1×1), group/layer norm, embedding, linear."""

    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(4, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.proj = nn.Conv2d(8, 6, 1, bias=False)
        self.embed = nn.Embedding(10, 6)
        self.fc1, self.ln, self.fc2 = nn.Linear(6, 12), nn.LayerNorm(12), nn.Linear(12, 6, bias=False)

    def forward(self, x, ids):
        h = self.proj(self.down(torch.relu(self.norm(self.conv_in(x)))))  # (B, 6, H/2, W/2)
        t = h.flatten(2).transpose(1, 2) + self.embed(ids)[:, None]  # (B, HW/4, 6)
        return self.fc2(torch.relu(self.ln(self.fc1(t))))


def _toy_and_reference(dtype=torch.float32):
    torch.manual_seed(0)
    model = Toy().to(dtype).requires_grad_(False)
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if type(module) in (nn.Linear, nn.Conv2d):
            module.weight.data = module.weight.data.to(FP8).to(dtype)  # what the fp8 model computes with
    return model, reference


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g).requires_grad_(), torch.tensor([3, 7])


def test_store_in_fp8_keeps_classes_and_computes_the_round_tripped_weights_exactly():
    model, reference = _toy_and_reference()
    assert store_in_fp8(model, torch.float32) == 5
    names = {n: type(m).__name__ for n, m in model.named_modules() if n}
    assert names == {n: type(m).__name__ for n, m in reference.named_modules() if n}
    for name in ("conv_in", "down", "proj", "fc1", "fc2"):
        layer = getattr(model, name)
        assert type(layer) in (nn.Linear, nn.Conv2d) and type(layer.weight) is nn.Parameter
        assert layer.weight.dtype == FP8 and not layer.weight.requires_grad
    assert model.conv_in.bias.dtype == model.fc1.bias.dtype == torch.float32
    assert {model.norm.weight.dtype, model.embed.weight.dtype, model.ln.weight.dtype} == {torch.float32}
    x, ids = _inputs()
    x_ref = x.detach().clone().requires_grad_()
    out, expected = model(x, ids), reference(x_ref, ids)
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_autocast_bf16_matches_bf16_compute():
    model, reference = _toy_and_reference(torch.bfloat16)
    unquantized = copy.deepcopy(model)
    store_in_fp8(model)  # None: each layer computes in its current dtype (bf16)
    x, ids = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected, plain = model(x, ids), reference(x.detach(), ids), unquantized(x.detach(), ids)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
    torch.testing.assert_close(out.float(), plain.float(), rtol=0.1, atol=0.1)  # fp8 rounding of the weights
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and bool(torch.isfinite(x.grad).all()) and x.grad.abs().sum() > 0


def test_backward_keeps_only_the_fp8_weights():
    """No upcast copy of a weight is saved for backward: the memory saving survives the forward pass."""
    model, _ = _toy_and_reference()
    store_in_fp8(model, torch.bfloat16)
    weight_shapes = {tuple(m.weight.shape) for m in model.modules() if type(m) in (nn.Linear, nn.Conv2d)}
    saved = []

    def keep(t):
        saved.append((t.dtype, tuple(t.shape)))
        return t

    x, ids = _inputs()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, ids).float().sum().backward()
    weights = [dtype for dtype, shape in saved if shape in weight_shapes]
    assert weights and set(weights) == {FP8}


@pytest.mark.parametrize("kwargs", [dict(padding=1, padding_mode="reflect"), dict(padding="same")])
def test_conv_layouts_without_the_fast_path(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, **kwargs).requires_grad_(False)
    reference = copy.deepcopy(conv)
    reference.weight.data = reference.weight.data.to(FP8).float()
    assert store_in_fp8(conv) == 1
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    assert torch.equal(conv(x), reference(x))
    conv(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is None


def test_skips_trainable_and_converted_leaves_and_refuses_wrapped_ones():
    trainable, frozen = nn.Linear(4, 4), nn.Linear(4, 4).requires_grad_(False)
    assert store_in_fp8(nn.Sequential(trainable, frozen)) == 1
    assert trainable.weight.dtype == torch.float32 and frozen.weight.dtype == FP8
    assert store_in_fp8(frozen) == 0  # already fp8: left alone
    wrapped = nn.Linear(4, 4).requires_grad_(False)
    wrapped.forward = lambda x: x
    with pytest.raises(RuntimeError, match="before the network is applied"):
        store_in_fp8(nn.Sequential(wrapped))


def test_compute_dtype_ignores_fp8_weights():
    model = Toy().to(torch.bfloat16).requires_grad_(False)
    store_in_fp8(model)
    assert next(model.parameters()).dtype == FP8 and compute_dtype(model) == torch.bfloat16
    assert compute_dtype(nn.Linear(2, 2, bias=False).requires_grad_(False).to(FP8)) == torch.float32


def test_lora_plugin_wraps_the_upcast_forward_on_tiny_sdxl():
    from library.models.sdxl_unet import SdxlUNet, SdxlUNetConfig
    from networks.lora import create_network

    torch.manual_seed(0)
    unet = SdxlUNet(SdxlUNetConfig.tiny()).to(torch.bfloat16).requires_grad_(False)
    converted = store_in_fp8(unet)
    assert converted == sum(type(m) in (nn.Linear, nn.Conv2d) for m in unet.modules())
    network = create_network(1.0, 4, 1.0, None, [], unet, conv_dim="4")
    network.apply_to([], unet, apply_text_encoder=False, apply_unet=True)
    q = unet.get_submodule("input_blocks.4.1.transformer_blocks.0.attn1.to_q")
    lora = q.forward.__self__  # the LoRA module wraps the layer's upcasting forward, not Linear.forward
    assert type(q) is nn.Linear and q.weight.dtype == FP8 and lora.org_forward.__self__ is q
    assert lora.org_forward.__func__ is not nn.Linear.forward
    for p in network.parameters():
        p.data.normal_(0, 0.05)
    cfg = SdxlUNetConfig.tiny()
    x, ctx, y = torch.randn(1, 4, 16, 16), torch.randn(1, 77, cfg.context_dim), torch.randn(1, cfg.adm_in_channels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = unet(x.to(torch.bfloat16), torch.tensor([500]), ctx.to(torch.bfloat16), y.to(torch.bfloat16))
    out.float().square().mean().backward()
    grads = [p.grad for p in network.parameters()]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    assert all(bool(torch.isfinite(g).all()) for g in grads if g is not None)
    assert all(p.grad is None for p in unet.parameters())
    assert _leaf_dtypes(unet) == {FP8}
    upcast = lora.org_forward
    lora.restore()
    assert q.forward == upcast  # removing the network leaves the fp8 layer computing


def _args(ckpt, toml, out, *extra):
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
            "--network_module", "networks.lora", "--network_dim", "4", "--max_train_steps", "2",
            "--max_data_loader_n_workers", "0", "--seed", "3", "--learning_rate", "1e-3", *extra]


def test_sdxl_fp8_base_trains_unet_and_text_encoder_loras_and_samples(assets, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square --w 64 --h 64 --s 2 --d 5\n", encoding="utf-8")
    out = tmp_path / "out"
    assert sdxl_main(_args(*assets, out, "--fp8_base", "--mixed_precision", "bf16", "--cache_latents",
                           "--sample_prompts", str(prompts), "--sample_every_n_steps", "2")) == 0
    weights, meta = load_file(out / "last.safetensors")
    assert meta["ss_fp8_base"] == "True" and meta["ss_fp8_base_unet"] == "False"
    assert {k.split("_")[1] for k in weights} == {"te1", "te2", "unet"}
    assert all(v.dtype == torch.float32 and bool(torch.isfinite(v).all()) for v in weights.values())
    for part in ("te1", "te2", "unet"):
        ups = [v for k, v in weights.items() if k.startswith(f"lora_{part}_") and k.endswith("lora_up.weight")]
        assert any(bool(u.abs().sum() > 0) for u in ups), part
    assert len(list((out / "sample").glob("*.png"))) == 1


def _sd15_trainer(tmp_path, *flags):
    from sd_train.cli import parse_options
    from sd_train.families.base import family_kwargs
    from sd_train.families.sd import SdFamily
    from sd_train.trainer import Trainer
    from tools.make_sample_dataset import make_sample_dataset
    from tools.make_tiny_model import make_tiny_checkpoint

    toml = make_sample_dataset(tmp_path / "d")
    image_dir = next(p for p in toml.parent.iterdir() if p.is_dir())
    (tmp_path / "plain.toml").write_text(
        '[general]\ncaption_extension = ".txt"\nresolution = 64\nbatch_size = 2\n'
        'enable_bucket = true\nmin_bucket_reso = 64\nmax_bucket_reso = 128\n\n'
        f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{image_dir.as_posix()}"\n', encoding="utf-8")
    ckpt = make_tiny_checkpoint("sd15", tmp_path / "sd.safetensors")
    options = parse_options(_args(ckpt, tmp_path / "plain.toml", tmp_path / "o", "--mixed_precision", "bf16",
                                  *flags), "sd")
    trainer = Trainer(options, SdFamily(**family_kwargs(options)))
    assert trainer.setup()
    return trainer


def _leaf_dtypes(model):
    return {m.weight.dtype for m in model.modules() if type(m) in (nn.Linear, nn.Conv2d)}


@pytest.mark.parametrize("flags, te_in_fp8", [(["--fp8_base_unet"], False), (["--fp8_base", "--fp8_base_unet"], False),
                                              (["--fp8_base"], True)])
def test_sd15_text_encoder_in_fp8_only_with_fp8_base(tmp_path, flags, te_in_fp8):
    trainer = _sd15_trainer(tmp_path, *flags)
    try:
        (te,) = trainer.models.text_encoders
        assert _leaf_dtypes(trainer.models.unet) == {FP8}
        assert _leaf_dtypes(te) == ({FP8} if te_in_fp8 else {torch.float32})  # CPU: TEs compute in fp32
        assert te.text_model.embeddings.token_embedding.weight.dtype == torch.float32
        assert te.text_model.final_layer_norm.weight.dtype == torch.float32
        trainer.dataset.set_epoch(1)
        loss, _ = trainer.compute_loss(trainer.dataset[0], trainer.gen, trainer.rng)
        loss.backward()
        grads = [p.grad for p in trainer.host.network.parameters() if p.grad is not None]
        assert bool(torch.isfinite(loss)) and grads and all(bool(torch.isfinite(g).all()) for g in grads)
        assert all(p.grad is None for p in trainer.models.unet.parameters())
        if te_in_fp8:
            _check_sampling(trainer)
    finally:
        trainer.cleanup()


def _check_sampling(trainer):
    """Sampling feeds the UNet its compute dtype (bf16), not the fp8 storage dtype of its first weight."""
    from sd_train import sampling

    seen, predict = [], trainer.family.predict

    def spy(unet, x, *rest):
        seen.append(x.dtype)
        return predict(unet, x, *rest)

    trainer.family.predict = spy
    prompt = sampling.SamplePrompt("a red square", width=64, height=64, seed=1, sample_steps=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image = sampling.generate(trainer.family, trainer.models, prompt)
    assert image.size == (64, 64) and seen == [torch.bfloat16] * 2


def _validate(**changes):
    values = TrainOptions().flat()
    values.update(changes)
    notes = normalize(values, "sdxl")
    return notes + validate(TrainOptions.from_flat(values), "sdxl")


@pytest.mark.parametrize("flag", ["fp8_base", "fp8_base_unet"])
def test_fp8_needs_mixed_precision(flag):
    with pytest.raises(UserError) as err:
        _validate(**{flag: True})
    assert str(err.value) == ("--fp8_base / --fp8_base_unet require --mixed_precision fp16 or bf16 "
                              "(fp8 weights compute upcast)")
    assert _validate(**{flag: True, "mixed_precision": "fp16"}) == []


def test_both_flags_warn_that_text_encoders_stay_out_of_fp8():
    assert _validate(fp8_base=True, fp8_base_unet=True, mixed_precision="bf16") == [
        "--fp8_base_unet is set: only the UNet is stored in fp8, the text encoders stay in fp16/bf16"]


@pytest.mark.parametrize("args, fails", [(None, True), (["algo=locon"], True), (["bypass_mode=false"], True),
                                         (["algo=locon", "bypass_mode = True"], False)])
def test_lycoris_needs_bypass_mode_with_fp8(args, fails):
    changes = dict(fp8_base=True, mixed_precision="bf16", network_module="lycoris.kohya", network_args=args)
    if not fails:
        assert _validate(**changes) == []
        return
    with pytest.raises(UserError) as err:
        _validate(**changes)
    assert str(err.value) == ("--fp8_base / --fp8_base_unet with a LyCORIS --network_module need "
                              "--network_args bypass_mode=True")
    assert _validate(**{**changes, "fp8_base": False}) == []


def test_cli_error_is_one_line_before_any_model_loads(tmp_path, capsys):
    code = sdxl_main(["--fp8_base", "--output_dir", str(tmp_path / "never"), "--network_module", "networks.lora"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--mixed_precision fp16 or bf16" in err[0]
    assert not (tmp_path / "never").exists()

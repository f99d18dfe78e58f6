"""sd_train.network_host: plugin import, argument passing, shims, LyCORIS handling, atomic finite saves."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import textwrap

import pytest
import torch

from library.errors import UserError
from netkit import ToyTextEncoder, ToyUNet, perturb
from sd_train.network_host import NetworkHost, NonFiniteNetworkError, parse_network_args

_ids = itertools.count()

RECORDER = '''
import torch
from torch import nn

CALLS = []


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def apply_to(self, te, unet, apply_te, apply_unet): CALLS.append(("apply_to", te, apply_te, apply_unet))
    def prepare_optimizer_params(self, te_lr, unet_lr, lr): {body}
    def prepare_grad_etc(self, te, unet): pass
    def on_epoch_start(self, te, unet): pass
    def get_trainable_params(self): return [{{"params": [self.w]}}]
    def prepare_network(self, args): CALLS.append(("prepare_network", args))
    def save_weights(self, file, dtype, metadata):
        CALLS.append(("save", file, metadata))
        open(file, "wb").write(b"x")


def create_network(multiplier, dim, alpha, vae, te, unet, neuron_dropout=None, **kwargs):
    CALLS.append(("create", te, kwargs, neuron_dropout))
    return {ret}
'''


def recorder(tmp_path, monkeypatch, body="return [{'params': [self.w], 'lr': unet_lr}]", ret="Net()"):
    name = f"rec_plugin_{next(_ids)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(RECORDER.format(body=body, ret=ret)))
    monkeypatch.syspath_prepend(str(tmp_path))
    host = NetworkHost.load(name)
    return host, host.module.CALLS


def test_load_errors_name_the_module():
    with pytest.raises(UserError, match="--network_module no_such.plugin: cannot import it"):
        NetworkHost.load("no_such.plugin")
    with pytest.raises(UserError, match="--network_module library.errors: has no create_network"):
        NetworkHost.load("library.errors")


def test_network_args_are_strings_and_dropout_is_added(tmp_path, monkeypatch):
    host, calls = recorder(tmp_path, monkeypatch)
    te = ToyTextEncoder()
    host.create_network(1.0, 4, 1.0, None, [te], None, 0.1, ["conv_dim=4", "algo = loha"])
    assert calls[-1] == ("create", te, {"conv_dim": "4", "algo": "loha", "dropout": 0.1}, 0.1)
    host.create_network(1.0, 4, 1.0, None, [te, te], None, None, {"dropout": 0.3})
    assert calls[-1][1] == [te, te] and calls[-1][2] == {"dropout": "0.3"}
    with pytest.raises(UserError, match="--network_args 'conv_dim': expected key=value"):
        parse_network_args(["conv_dim"])


def test_none_network_and_missing_methods(tmp_path, monkeypatch):
    host, _ = recorder(tmp_path, monkeypatch, ret="None")
    assert host.create_network(1.0, 4, 1.0, None, [], None, None, None) is None
    host, _ = recorder(tmp_path, monkeypatch, ret="object()")
    with pytest.raises(UserError, match="the network has no apply_to\\(\\) method"):
        host.create_network(1.0, 4, 1.0, None, [], None, None, None)


def test_create_from_options_calls_prepare_network(tmp_path, monkeypatch):
    host, calls = recorder(tmp_path, monkeypatch)

    @dataclasses.dataclass
    class Net:
        network_module: str = host.module_name
        network_dim: int = 8
        network_alpha: float = 4.0
        network_dropout: float | None = None
        network_args: list | None = None
        dim_from_weights: bool = False
        network_weights: str | None = None

    @dataclasses.dataclass
    class Opts:
        network: Net = dataclasses.field(default_factory=Net)

    created = NetworkHost.create(Opts(), None, [ToyTextEncoder()], None)
    assert created.network is not None
    args = next(c[1] for c in calls if c[0] == "prepare_network")
    assert (args.network_dim, args.network_module) == (8, host.module_name)


def test_optimizer_groups_normalized_and_old_two_arg_signature(tmp_path, monkeypatch):
    host, _ = recorder(tmp_path, monkeypatch)
    host.create_network(1.0, 4, 1.0, None, [], None, None, None)
    groups, descs = host.optimizer_groups([1e-5], None, 1e-3)
    assert descs == ["group0"] and "lr" not in groups[0] and isinstance(groups[0]["params"], list)
    host = NetworkHost.load("fake_lora_plugin")
    host.create_network(1.0, 4, 1.0, None, [ToyTextEncoder()], ToyUNet(), None, None)
    groups, descs = host.optimizer_groups(None, 2e-4, 1e-3)  # fake takes (text_encoder_lr, unet_lr)
    assert descs == ["group0"] and groups[0]["lr"] == 2e-4


def test_real_type_errors_are_not_hidden(tmp_path, monkeypatch):
    host, _ = recorder(tmp_path, monkeypatch, body="raise TypeError('bug inside the plugin')")
    host.create_network(1.0, 4, 1.0, None, [], None, None, None)
    with pytest.raises(TypeError, match="bug inside the plugin"):
        host.optimizer_groups(None, 1e-4, 1e-3)


def test_save_uses_temp_path_with_same_suffix_then_renames(tmp_path, monkeypatch):
    host, calls = recorder(tmp_path, monkeypatch)
    host.create_network(1.0, 4, 1.0, None, [], None, None, None)
    final = tmp_path / "out" / "my.lora.safetensors"
    meta = {"ss_base_model_version": "sd_v1"}
    host.save(str(final), None, meta)
    _, written, passed_meta = calls[-1]
    assert written != str(final) and written.endswith(".safetensors") and passed_meta == meta
    assert passed_meta is not meta
    assert final.read_bytes() == b"x" and sorted(p.name for p in final.parent.iterdir()) == ["my.lora.safetensors"]


def test_non_finite_network_is_never_written(tmp_path):
    host = NetworkHost.load("networks.lora")
    te, unet = ToyTextEncoder(), ToyUNet()
    net = host.create_network(1.0, 4, 1.0, None, [te], unet, None, None)
    host.apply_to([te], unet, True, True)
    with torch.no_grad():
        next(net.parameters())[0] = float("nan")
    with pytest.raises(NonFiniteNetworkError, match="NaN/Inf"):
        host.save(str(tmp_path / "n.safetensors"), None, None)
    assert list(tmp_path.iterdir()) == []


def test_base_weights_merge_with_multiplier(tmp_path):
    host = NetworkHost.load("networks.lora")
    te, unet = ToyTextEncoder(), ToyUNet()
    net = host.create_network(1.0, 4, 1.0, None, [te], unet, None, None)
    host.apply_to([te], unet, True, True)
    perturb(net)
    host.save(str(tmp_path / "b.safetensors"), None, {})
    host.network.restore()
    w0 = unet.down_blocks[0].attentions[0].to_q.weight.clone()
    host.merge_base_weights([str(tmp_path / "b.safetensors")] * 2, [0.5], [te], unet, None, "cpu")
    q = dict(net.named_children())["lora_unet_down_blocks_0_attentions_0_to_q"]
    delta = q.lora_up.weight @ q.lora_down.weight * q.scale
    torch.testing.assert_close(unet.down_blocks[0].attentions[0].to_q.weight, w0 + 1.5 * delta)


def test_lycoris_default_preset_on_sd15_unet_is_a_user_error(make_case):
    case = make_case("sd15")
    host = NetworkHost.load("lycoris.kohya")
    with pytest.raises(UserError, match="duplicated lora name.*add --network_args preset=attn-mlp"):
        host.create_network(1.0, 4, 1.0, None, case.tes, case.unet, None, ["algo=loha"])


def test_lycoris_boolean_zero_warns(caplog):
    host = NetworkHost.load("lycoris.kohya")
    te, unet = ToyTextEncoder(), ToyUNet()
    with caplog.at_level(logging.WARNING, logger="sd_train.network_host"):
        host.create_network(1.0, 4, 1.0, None, [te], unet, None, ["algo=lora", "use_tucker=0", "dora_wd=off",
                                                                   "rs_lora=false"])
    text = caplog.text
    assert "use_tucker=0 means TRUE for LyCORIS" in text and "dora_wd=off" in text and "rs_lora" not in text


def test_optional_methods_get_defaults_for_a_minimal_plugin():
    host = NetworkHost.load("fake_lora_plugin")
    te, unet = ToyTextEncoder(), ToyUNet()
    host.create_network(1.0, 4, 1.0, None, [te], unet, None, None)
    host.apply_to([te], unet, True, True)
    host.enable_gradient_checkpointing()
    host.on_step_start([te], unet)
    host.prepare_network(None)
    assert host.apply_max_norm_regularization(1.0, "cpu") is None
    assert host.norms() == {}
    assert len(host.get_trainable_params()) == 2 * len(host.network.adapters)
    lora = NetworkHost.load("networks.lora")
    lora.create_network(1.0, 4, 1.0, None, [te], unet, None, None)
    lora.apply_to([te], unet, True, True)
    assert lora.apply_max_norm_regularization(100.0, "cpu") == (0, pytest.approx(0.0), pytest.approx(0.0))
    bare = NetworkHost(None, "bare")
    bare.network = object()
    with pytest.raises(UserError, match="--network_module bare: has no set_multiplier"):
        bare.set_multiplier(0.0)


def test_create_from_options_with_dim_from_weights(tmp_path):
    te, unet = ToyTextEncoder(), ToyUNet()
    first = NetworkHost.load("networks.lora")
    first.create_network(1.0, 3, 1.5, None, [te], unet, None, ["conv_dim=2"])
    first.apply_to([te], unet, False, True)
    first.save(str(tmp_path / "w.safetensors"), None, None)
    first.network.restore()

    @dataclasses.dataclass
    class Net:
        network_module: str = "networks.lora"
        network_dim: int = 32
        network_alpha: float = 1.0
        network_dropout: float | None = None
        network_args: list | None = None
        dim_from_weights: bool = True
        network_weights: str = str(tmp_path / "w.safetensors")

    @dataclasses.dataclass
    class Opts:
        network: Net = dataclasses.field(default_factory=Net)

    host = NetworkHost.create(Opts(), None, [te], unet)
    mods = host.network.unet_loras
    assert host.network.text_encoder_loras == [] and len(mods) == len(first.network.unet_loras)
    assert {(m.lora_dim, float(m.alpha)) for m in mods if not m.lora_name.endswith(("conv1", "conv"))} == {(3, 1.5)}
    assert {m.lora_dim for m in mods if m.lora_name.endswith(("conv1", "downsamplers_0_conv"))} == {2}

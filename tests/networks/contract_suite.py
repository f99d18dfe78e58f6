"""The plugin contract suite (ARCHITECTURE.md §6 tier 3), parametrized over plugins. The
``test_contract_*.py`` files bind :class:`ContractCore` and :class:`ContractIO` to one model kind."""

from __future__ import annotations

import pytest
import torch

from library.io.safetensors_io import data_section_sha256, read_header
from sd_train.network_host import NetworkHost
from netkit import perturb

# name -> (module, network_args per model kind, hash kind)
PLUGINS = {
    "lora": ("networks.lora", {}, "addnet"),
    "lora_conv": ("networks.lora", {"*": ["conv_dim=3", "conv_alpha=2"]}, "addnet"),
    "fake": ("fake_lora_plugin", {}, None),
    "loha": ("lycoris.kohya", {"*": ["algo=loha"], "sd15": ["algo=loha", "preset=attn-mlp"]}, "lycoris"),
    "lokr": ("lycoris.kohya", {"*": ["algo=lokr"], "sd15": ["algo=lokr", "preset=attn-mlp"]}, "lycoris"),
}
META = {"ss_base_model_version": "sdxl_base_v1-0", "ss_network_module": "x", "modelspec.architecture": "a"}


def make(plugin: str, case, kind: str):
    module, args, _ = PLUGINS[plugin]
    host = NetworkHost.load(module)
    net = host.create_network(1.0, 4, 2.0, None, case.tes, case.unet, None, args.get(kind, args.get("*", [])))
    host.apply_to(case.tes, case.unet, True, True)
    return host, net


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


class ContractCore:
    """Identity at init, multiplier 0, one optimizer step, restore. Subclasses set ``KIND``."""

    KIND = "toy"

    @pytest.mark.parametrize("plugin", list(PLUGINS))
    def test_identity_at_init_and_multiplier_zero(self, plugin, make_case):
        case = make_case(self.KIND)
        base = case.run(case.tes, case.unet)
        host, net = make(plugin, case, self.KIND)
        assert torch.equal(case.run(case.tes, case.unet), base)
        perturb(net)
        assert not torch.allclose(case.run(case.tes, case.unet), base)
        host.set_multiplier(0.0)
        assert torch.equal(case.run(case.tes, case.unet), base)

    @pytest.mark.parametrize("plugin", list(PLUGINS))
    def test_one_step_changes_only_network(self, plugin, make_case):
        case = make_case(self.KIND)
        before = case.state()
        host, net = make(plugin, case, self.KIND)
        groups, descs = host.optimizer_groups(None, None, 0.1)
        assert len(groups) == len(descs) >= 1
        host.prepare_grad_etc(case.tes, case.unet)
        host.on_epoch_start(case.tes, case.unet)
        host.on_step_start(case.tes, case.unet)
        net_before = {k: v.clone() for k, v in net.state_dict().items()}
        opt = torch.optim.SGD(groups, lr=0.1)
        case.run(case.tes, case.unet).square().mean().backward()
        opt.step()
        assert all(torch.isfinite(p).all() for p in host.get_trainable_params())
        assert any(not torch.equal(v, net_before[k]) for k, v in net.state_dict().items())
        assert_same_state(before, case.state())

    @pytest.mark.parametrize("plugin", list(PLUGINS))
    def test_restore_is_bit_identical(self, plugin, make_case):
        case = make_case(self.KIND)
        base, before = case.run(case.tes, case.unet), case.state()
        host, net = make(plugin, case, self.KIND)
        perturb(net)
        case.run(case.tes, case.unet).sum()
        host.network.restore()
        assert torch.equal(case.run(case.tes, case.unet), base)
        assert_same_state(before, case.state())


class ContractIO:
    """Merge, save/load round trip, stacking. Subclasses set ``KIND``."""

    KIND = "toy"

    @pytest.mark.parametrize("plugin", list(PLUGINS))
    def test_merged_matches_patched(self, plugin, make_case, tmp_path):
        case = make_case(self.KIND)
        host, net = make(plugin, case, self.KIND)
        perturb(net, std=0.01)
        patched = case.run(case.tes, case.unet)
        host.save(str(tmp_path / "n.safetensors"), None, META)
        host.network.restore()
        host.merge_base_weights([str(tmp_path / "n.safetensors")], [1.0], case.tes, case.unet, None, "cpu")
        merged = case.run(case.tes, case.unet)
        # LyCORIS rebuilds LoHa/LoKr weights with its own op order: ~5e-5 apart on tiny SDXL in fp32
        tol = 1e-4 if PLUGINS[plugin][0].startswith("lycoris") else 1e-5
        torch.testing.assert_close(merged, patched, atol=tol, rtol=tol)

    @pytest.mark.parametrize("plugin", list(PLUGINS))
    def test_save_create_from_weights_load_round_trip(self, plugin, make_case, tmp_path):
        case = make_case(self.KIND)
        host, net = make(plugin, case, self.KIND)
        perturb(net)
        patched = case.run(case.tes, case.unet)
        path = tmp_path / "rt.safetensors"
        host.save(str(path), None, META)
        host.network.restore()
        header, meta = read_header(path)
        saved = {k: v.detach() for k, v in net.state_dict().items()}
        assert set(header) == set(saved)
        assert {v["dtype"] for v in header.values()} == {"F32"}
        assert {k: meta[k] for k in META} == META
        hash_kind = PLUGINS[plugin][2]
        if hash_kind == "addnet":
            assert meta["sshs_model_hash"] == data_section_sha256(path)
            assert all(header[k]["shape"] == [] for k in header if k.endswith(".alpha"))
        elif hash_kind == "lycoris":
            assert meta["sshs_model_hash"].startswith("0x")
        host2 = NetworkHost.load(PLUGINS[plugin][0])
        net2, _ = host2.create_from_weights(1.0, str(path), None, case.tes, case.unet)
        host2.apply_to(case.tes, case.unet, True, True)
        host2.load_weights(str(path))
        loaded = net2.state_dict()
        assert set(loaded) == set(saved) and all(torch.equal(loaded[k], saved[k]) for k in saved)
        torch.testing.assert_close(case.run(case.tes, case.unet), patched, atol=1e-6, rtol=1e-6)

    @pytest.mark.parametrize("plugin", list(PLUGINS))
    def test_two_stacked_networks_removed_in_any_order(self, plugin, make_case):
        case = make_case(self.KIND)
        base, before = case.run(case.tes, case.unet), case.state()
        host_a, net_a = make(plugin, case, self.KIND)
        perturb(net_a, seed=1)
        only_a = case.run(case.tes, case.unet)
        net_a.restore()
        host_b, net_b = make(plugin, case, self.KIND)
        perturb(net_b, seed=2)
        only_b = case.run(case.tes, case.unet)
        net_b.restore()
        for first, rest, rest_out in ((net_b, net_a, only_a), (net_a, net_b, only_b)):  # LIFO, then FIFO
            host_a.apply_to(case.tes, case.unet, True, True)
            host_b.apply_to(case.tes, case.unet, True, True)
            both = case.run(case.tes, case.unet)
            assert not torch.allclose(both, only_a) and not torch.allclose(both, only_b)
            first.restore()
            torch.testing.assert_close(case.run(case.tes, case.unet), rest_out, atol=1e-6, rtol=1e-6)
            rest.restore()
            assert torch.equal(case.run(case.tes, case.unet), base)
            assert_same_state(before, case.state())

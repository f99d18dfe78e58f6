"""A minimal third-party network module for the contract tests (not kohya's code, not networks.lora).

It patches with forward hooks instead of forward swapping, writes its own key names, uses kohya's old
two-argument ``prepare_optimizer_params`` returning a bare list, and lacks every optional method except
``set_multiplier`` and ``merge_to``: the host must fill the gaps.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file
from torch import nn

PARENTS = ("Transformer2DModel", "CLIPAttention", "CLIPMLP")


def _targets(text_encoder, unet):
    tes = text_encoder if isinstance(text_encoder, list) else [text_encoder]
    roots = [(f"fake_te{i}", te) for i, te in enumerate(tes) if te is not None] + [("fake_unet", unet)]
    for prefix, root in roots:
        for path, parent in root.named_modules():
            if parent.__class__.__name__ in PARENTS:
                for child, leaf in parent.named_modules():
                    if isinstance(leaf, nn.Linear):
                        yield f"{prefix}_{path}_{child}".replace(".", "_"), leaf


class RankOne(nn.Module):
    """``y += multiplier · (x·a) b`` on one Linear; ``b`` starts at zero."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.a = nn.Parameter(torch.randn(layer.in_features) / layer.in_features ** 0.5)
        self.b = nn.Parameter(torch.zeros(layer.out_features))
        self.layer = [layer]
        self.multiplier = 1.0
        self.handle = None

    def hook(self, module, inputs, output):
        return output + self.multiplier * (inputs[0] @ self.a)[..., None] * self.b


class FakeNetwork(nn.Module):
    def __init__(self, text_encoder, unet, multiplier):
        super().__init__()
        self.adapters = nn.ModuleDict({name: RankOne(layer) for name, layer in _targets(text_encoder, unet)})
        self.set_multiplier(multiplier)

    def set_multiplier(self, multiplier):
        for m in self.adapters.values():
            m.multiplier = multiplier

    def apply_to(self, text_encoder, unet, apply_text_encoder, apply_unet):
        for m in self.adapters.values():
            m.handle = m.layer[0].register_forward_hook(m.hook)

    def restore(self):
        for m in self.adapters.values():
            m.handle.remove()

    def prepare_optimizer_params(self, text_encoder_lr, unet_lr):
        return [{"params": list(self.parameters()), "lr": unet_lr}]

    def prepare_grad_etc(self, text_encoder, unet):
        self.requires_grad_(True)

    def on_epoch_start(self, text_encoder, unet):
        self.train()

    def get_trainable_params(self):
        return self.parameters()

    def save_weights(self, file, dtype, metadata):
        sd = {k: v.detach().to(dtype or v.dtype).contiguous() for k, v in self.state_dict().items()}
        save_file(sd, file, metadata or {})

    def load_weights(self, file):
        return self.load_state_dict(load_file(file), strict=False)

    @torch.no_grad()
    def merge_to(self, text_encoder, unet, weights_sd, dtype, device):
        for name, m in self.adapters.items():
            a, b = weights_sd[f"adapters.{name}.a"], weights_sd[f"adapters.{name}.b"]
            m.layer[0].weight += m.multiplier * torch.outer(b, a)


def create_network(multiplier, network_dim, network_alpha, vae, text_encoder, unet, **kwargs):
    return FakeNetwork(text_encoder, unet, multiplier)


def create_network_from_weights(multiplier, file, vae, text_encoder, unet, weights_sd=None, for_inference=False,
                                **kwargs):
    return FakeNetwork(text_encoder, unet, multiplier), (weights_sd or load_file(file))

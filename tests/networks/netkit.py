"""Shared models and helpers for the network tests: a toy model with kohya's class names, tiny SDXL and
tiny SD1.5, each with a deterministic forward that goes through every text encoder and the UNet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


class Transformer2DModel(nn.Module):
    """Toy attention block: 1×1 conv in/out (4-D LoRA tensors) and Linear q/out in between."""

    def __init__(self, ch: int = 4, inner: int = 8):
        super().__init__()
        self.proj_in = nn.Conv2d(ch, inner, 1)
        self.to_q = nn.Linear(inner, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, inner)])
        self.proj_out = nn.Conv2d(inner, ch, 1)

    def forward(self, x):
        h = self.proj_in(x)
        b, c, hh, ww = h.shape
        t = h.flatten(2).transpose(1, 2)
        t = self.to_out[0](torch.tanh(self.to_q(t)))
        return x + self.proj_out(t.transpose(1, 2).reshape(b, c, hh, ww))


class ResnetBlock2D(nn.Module):
    def __init__(self, ch: int = 4, out: int = 6, emb: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, out, 3, padding=1)
        self.time_emb_proj = nn.Linear(emb, out)
        self.conv_shortcut = nn.Conv2d(ch, out, 1)

    def forward(self, x, emb):
        return self.conv_shortcut(x) + torch.relu(self.conv1(x) + self.time_emb_proj(emb)[:, :, None, None])


class Downsample2D(nn.Module):
    def __init__(self, ch: int = 6):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class ToyUNet(nn.Module):
    """``down_blocks.0.{attentions.0, resnets.0, downsamplers.0}`` in diffusers naming."""

    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(4, 4, 3, padding=1)
        block = nn.Module()
        block.attentions = nn.ModuleList([Transformer2DModel()])
        block.resnets = nn.ModuleList([ResnetBlock2D()])
        block.downsamplers = nn.ModuleList([Downsample2D()])
        self.down_blocks = nn.ModuleList([block])

    def forward(self, x, emb):
        b = self.down_blocks[0]
        h = b.attentions[0](self.conv_in(x))
        return b.downsamplers[0](b.resnets[0](h, emb))


class CLIPAttention(nn.Module):
    def __init__(self, d: int = 8):
        super().__init__()
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        w = torch.softmax(self.q_proj(x) @ self.k_proj(x).transpose(1, 2), -1)
        return self.out_proj(w @ self.v_proj(x))


class CLIPMLP(nn.Module):
    def __init__(self, d: int = 8):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class ToyTextEncoder(nn.Module):
    """``text_model.encoder.layers.0.{self_attn, mlp}``."""

    def __init__(self):
        super().__init__()
        self.text_model = nn.Module()
        self.text_model.embed = nn.Embedding(16, 8)
        layer = nn.Module()
        layer.self_attn, layer.mlp = CLIPAttention(), CLIPMLP()
        self.text_model.encoder = nn.Module()
        self.text_model.encoder.layers = nn.ModuleList([layer])

    def forward(self, ids):
        layer = self.text_model.encoder.layers[0]
        h = self.text_model.embed(ids)
        h = h + layer.self_attn(h)
        return h + layer.mlp(h)


@dataclass
class ModelCase:
    """Text encoders (list), UNet, and ``run(tes, unet) -> Tensor`` with fixed inputs."""

    tes: list
    unet: nn.Module
    run: Callable[[list, nn.Module], torch.Tensor]
    is_sdxl: bool = False

    def modules(self) -> list[nn.Module]:
        return [*self.tes, self.unet]

    def state(self) -> dict[str, torch.Tensor]:
        return {f"{i}.{k}": v.clone() for i, m in enumerate(self.modules()) for k, v in m.state_dict().items()}


def _freeze(case: ModelCase) -> ModelCase:
    for m in case.modules():
        m.requires_grad_(False).eval()
    return case


def toy_case() -> ModelCase:
    g = torch.Generator().manual_seed(1)
    x, ids = torch.randn(2, 4, 6, 6, generator=g), torch.randint(0, 16, (2, 5), generator=g)
    tes, unet = [ToyTextEncoder()], ToyUNet()

    def run(tes, unet):
        emb = tes[0](ids).mean(1)
        return unet(x, emb)
    return _freeze(ModelCase(tes, unet, run))


def _ids(g):
    ids = torch.randint(1, 49000, (1, 77), generator=g)
    ids[0, 0], ids[0, 9:] = 49406, 49407
    return ids


def sdxl_case() -> ModelCase:
    from library.models.sdxl_unet import SdxlUNet, SdxlUNetConfig
    from library.models.text_encoders import CLIPTextModel, CLIPTextModelWithProjection, ClipTextConfig

    g = torch.Generator().manual_seed(2)
    ids, x = _ids(g), torch.randn(1, 4, 16, 16, generator=g)
    te1 = CLIPTextModel(ClipTextConfig.tiny())
    te2 = CLIPTextModelWithProjection(ClipTextConfig.tiny(projection_dim=32, hidden_act="gelu"))
    unet = SdxlUNet(SdxlUNetConfig.tiny())

    def run(tes, unet):
        o1, o2 = tes[0](ids, output_hidden_states=True), tes[1](ids, output_hidden_states=True)
        ctx = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], -1)
        y = torch.cat([o2.text_embeds, torch.zeros(1, 96)], -1)
        return unet(x, torch.tensor([500]), ctx, y)
    return _freeze(ModelCase([te1, te2], unet, run, is_sdxl=True))


def sd15_case() -> ModelCase:
    from library.models.sd_unet import build_sd_unet, sd_unet_config
    from library.models.text_encoders import CLIPTextModel, ClipTextConfig

    g = torch.Generator().manual_seed(3)
    ids, x = _ids(g), torch.randn(1, 4, 8, 8, generator=g)
    te, unet = CLIPTextModel(ClipTextConfig.tiny()), build_sd_unet(sd_unet_config("sd1", tiny=True))

    def run(tes, unet):
        return unet(x, torch.tensor([500]), encoder_hidden_states=tes[0](ids).last_hidden_state).sample
    return _freeze(ModelCase([te], unet, run))


CASES = {"toy": toy_case, "sdxl": sdxl_case, "sd15": sd15_case}


@torch.no_grad()
def perturb(network: nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Give every trainable network parameter small random values (so the adapter is not a no-op)."""
    g = torch.Generator().manual_seed(seed)
    for p in network.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * std)

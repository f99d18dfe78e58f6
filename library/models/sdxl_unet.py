"""The SDXL UNet with the module names of Stability AI's generative-models (SGM) code.

LoRA plugins written for kohya-ss/sd-scripts find their targets by class name
(``Transformer2DModel``, ``ResnetBlock2D``, ``Downsample2D``, ``Upsample2D``) and build key names
from module paths (``input_blocks.4.1.transformer_blocks.0.attn1.to_q``), so this model reproduces
kohya's ``library/sdxl_original_unet.py`` layout exactly (NETWORKS.md §1). ``state_dict()`` keys are
the ``model.diffusion_model.*`` keys of an SDXL single-file checkpoint without that prefix
(FORMAT.md §10.3).

Unlike kohya's file, every size comes from :class:`SdxlUNetConfig`, so tests build a tiny model
with the same module structure (``SdxlUNetConfig.tiny()``) and the full model on the ``meta``
device.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from library.errors import UserError

# Dtypes the model can compute in directly; anything else (fp8 storage) relies on autocast.
_COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class SdxlUNetConfig:
    """Sizes of an SDXL UNet (the defaults are SDXL base 1.0, the SGM ``UNetModel`` params).

    Attributes:
        in_channels: Latent channels in (4).
        out_channels: Latent channels out (4).
        model_channels: Channels of level 0; level ``i`` has ``model_channels * channel_mult[i]``.
        channel_mult: Channel multiplier per resolution level (one level per entry).
        num_res_blocks: ResNet blocks per level on the way down (``+1`` on the way up).
        transformer_depth: ``BasicTransformerBlock`` count per level; 0 = no attention there
            (SDXL level 0 has none).
        transformer_depth_middle: ``BasicTransformerBlock`` count in ``middle_block.1``.
        num_head_channels: Channels per attention head (heads = channels // this).
        context_dim: Width of the text conditioning (TE1 768 + TE2 1280 = 2048 for SDXL).
        adm_in_channels: Width of the vector ``y`` fed to ``label_emb``
            (pooled TE2 output + 6 size embeddings, 1280 + 6 * 256 = 2816 for SDXL).
        size_embed_dim: Width of one sinusoidal size embedding (TRAINING.md §3.4).
        use_linear_in_transformer: ``proj_in``/``proj_out`` are Linear (SDXL) or 1x1 Conv2d.
        norm_num_groups: GroupNorm groups in ResNets, transformers and ``out.0``.
        time_embed_mult: ``time_embed_dim = model_channels * time_embed_mult`` (1280 for SDXL).
        dropout: Dropout probability in ResNets and attention (0 in SDXL training).
        timestep_freq_shift: 0 divides the frequency exponent by ``dim / 2`` as SGM does; kohya's
            ``sdxl_original_unet.get_timestep_embedding`` uses 1 (divides by ``dim / 2 - 1``).
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    transformer_depth: tuple[int, ...] = (0, 2, 10)
    transformer_depth_middle: int = 10
    num_head_channels: int = 64
    context_dim: int = 2048
    adm_in_channels: int = 2816
    size_embed_dim: int = 256
    use_linear_in_transformer: bool = True
    norm_num_groups: int = 32
    time_embed_mult: int = 4
    dropout: float = 0.0
    timestep_freq_shift: float = 0.0  # sd-train: SGM's embedding; kohya's UNet uses 1

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "transformer_depth", tuple(int(d) for d in self.transformer_depth))
        if len(self.transformer_depth) != len(self.channel_mult):
            raise ValueError("SdxlUNetConfig: transformer_depth needs one entry per channel_mult level")
        for ch in self.level_channels:
            if ch % self.norm_num_groups or ch % self.num_head_channels:
                raise ValueError(
                    f"SdxlUNetConfig: {ch} channels must divide by norm_num_groups "
                    f"({self.norm_num_groups}) and num_head_channels ({self.num_head_channels})"
                )
        if self.pooled_dim < 0:
            raise ValueError("SdxlUNetConfig: adm_in_channels is smaller than 6 * size_embed_dim")

    @classmethod
    def full(cls) -> "SdxlUNetConfig":
        """SDXL base 1.0 (2.6 B parameters); build it on ``torch.device("meta")`` in tests."""
        return cls()

    @classmethod
    def tiny(cls) -> "SdxlUNetConfig":
        """A CPU-test model (6.1 M parameters) with exactly the full model's module paths and classes.

        Channels (32, 64, 128), one transformer block per attention level, 16-channel heads,
        context 64 wide (tiny TE1 32 + tiny TE2 32), ``y`` = 32 pooled + 6 * 16 size-embedding
        values = 128. The channel ratios are SDXL's (1, 2, 4): with equal widths on two levels
        ``input_blocks.7.0`` would lose its ``skip_connection`` conv and the LoCon key set would differ.
        """
        return cls(
            model_channels=32,
            channel_mult=(1, 2, 4),
            transformer_depth=(0, 1, 1),
            transformer_depth_middle=1,
            num_head_channels=16,
            context_dim=64,
            size_embed_dim=16,
            adm_in_channels=32 + 6 * 16,
        )

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep embedding after ``time_embed`` (1280 for SDXL)."""
        return self.model_channels * self.time_embed_mult

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Channels of each resolution level, e.g. (320, 640, 1280)."""
        return tuple(self.model_channels * m for m in self.channel_mult)

    @property
    def pooled_dim(self) -> int:
        """Width of the pooled text embedding part of ``y`` (1280 for SDXL)."""
        return self.adm_in_channels - 6 * self.size_embed_dim

    def to_dict(self) -> dict:
        """JSON-friendly dict (tuples become lists); inverse of :meth:`from_dict`."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SdxlUNetConfig":
        """Build a config from :meth:`to_dict` output (e.g. read from a tiny checkpoint's metadata).

        Raises:
            UserError: ``d`` has a key that is not a config field.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(
                f"SDXL UNet config: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}"
            )
        return cls(**d)

    @classmethod
    def from_diffusers(cls, cfg: dict) -> "SdxlUNetConfig":
        """The config of a diffusers SDXL ``unet/config.json`` (inverse of :meth:`to_diffusers`)."""
        chans = list(cfg["block_out_channels"])
        depth = cfg.get("transformer_layers_per_block", 1)
        depth = [depth] * len(chans) if isinstance(depth, int) else list(depth)
        depth = [d if t.startswith("CrossAttn") else 0 for d, t in zip(depth, cfg["down_block_types"])]
        heads = cfg.get("num_attention_heads") or cfg["attention_head_dim"]
        heads = [heads] * len(chans) if isinstance(heads, int) else list(heads)
        return cls(
            in_channels=cfg.get("in_channels", 4), out_channels=cfg.get("out_channels", 4), model_channels=chans[0],
            channel_mult=tuple(c // chans[0] for c in chans), num_res_blocks=cfg.get("layers_per_block", 2),
            transformer_depth=tuple(depth), transformer_depth_middle=max(depth),
            num_head_channels=chans[-1] // heads[-1], context_dim=cfg["cross_attention_dim"],
            adm_in_channels=cfg["projection_class_embeddings_input_dim"],
            size_embed_dim=cfg.get("addition_time_embed_dim", 256), norm_num_groups=cfg.get("norm_num_groups", 32))

    def to_diffusers(self) -> dict:
        """diffusers ``UNet2DConditionModel`` kwargs of the same architecture."""
        chans = [self.model_channels * m for m in self.channel_mult]
        down = ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in self.transformer_depth]
        return {"in_channels": self.in_channels, "out_channels": self.out_channels, "block_out_channels": chans,
                "down_block_types": down, "up_block_types": [t.replace("Down", "Up") for t in reversed(down)],
                "layers_per_block": self.num_res_blocks, "transformer_layers_per_block": list(self.transformer_depth),
                "attention_head_dim": [c // self.num_head_channels for c in chans],
                "cross_attention_dim": self.context_dim, "use_linear_projection": True,
                "addition_embed_type": "text_time", "addition_time_embed_dim": self.size_embed_dim,
                "projection_class_embeddings_input_dim": self.adm_in_channels,
                "norm_num_groups": self.norm_num_groups}


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, max_period: float = 10000.0, freq_shift: float = 0.0
) -> torch.Tensor:
    """Sinusoidal embedding, cosine half first (SGM ``timestep_embedding``).

    ``freqs[i] = exp(-ln(max_period) * i / (dim // 2 - freq_shift))`` for ``i < dim // 2``.

    Args:
        timesteps: (N,) timesteps or other scalars (may be fractional).
        dim: Output width; an odd width gets one zero column appended.
        max_period: Longest period of the embedding.
        freq_shift: 0 for SGM/diffusers; 1 reproduces kohya's SDXL UNet.

    Returns:
        (N, dim) float32 tensor ``[cos(t * freqs), sin(t * freqs)]``.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / (half - freq_shift)
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def size_embedding(time_ids: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """Embed SDXL size conditioning (TRAINING.md §3.4).

    Args:
        time_ids: (B, 6) ``original_h, original_w, crop_top, crop_left, target_h, target_w`` in pixels.
        dim: Width of each embedding (``config.size_embed_dim``).

    Returns:
        (B, 6 * dim) float32, each value embedded with :func:`timestep_embedding`, in input order;
        concatenate after the pooled text embedding to get ``y``.
    """
    batch = time_ids.shape[0]
    return timestep_embedding(time_ids.reshape(-1), dim).reshape(batch, -1)


def _run_maybe_checkpointed(module: nn.Module, fn, *args):
    """Call ``fn(*args)``, through non-reentrant activation checkpointing when enabled and training."""
    if module.gradient_checkpointing and module.training and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class ResnetBlock2D(nn.Module):
    """SGM ``ResBlock``: ``in_layers`` -> add projected time embedding -> ``out_layers`` + skip.

    Args:
        in_channels: Input channels.
        out_channels: Output channels; a 1x1 ``skip_connection`` conv is added when they differ.
        emb_dim: Width of the time embedding (``config.time_embed_dim``).
        groups: GroupNorm groups.
        dropout: Dropout probability before the second conv (``out_layers.2``).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(groups, in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(groups, out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        if in_channels != out_channels:
            self.skip_connection = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.skip_connection = nn.Identity()
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Map (B, in, H, W) and (B, emb_dim) to (B, out, H, W)."""
        return _run_maybe_checkpointed(self, self._forward, x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    """Multi-head attention with ``to_q``/``to_k``/``to_v`` (no bias) and ``to_out.0``.

    Args:
        query_dim: Width of the hidden states (and of the output).
        context_dim: Width of the keys/values source; ``None`` = self-attention.
        heads: Number of heads.
        head_dim: Channels per head.
        dropout: Dropout after ``to_out.0``.
    """

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        inner = heads * head_dim
        kv_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(kv_dim, inner, bias=False)
        self.to_v = nn.Linear(kv_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))
        self.attention_backend = "sdpa"

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Attend (B, N, query_dim) to ``context`` (B, T, context_dim), or to itself; returns (B, N, query_dim)."""
        source = x if context is None else context.to(x.dtype)
        q, k, v = self.to_q(x), self.to_k(source), self.to_v(source)
        if self.attention_backend == "xformers":
            out = self._xformers(q, k, v)
        else:
            out = self._sdpa(q, k, v)
        return self.to_out(out)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, heads * d) -> (B, N, heads, d)."""
        return t.reshape(t.shape[0], t.shape[1], self.heads, -1)

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._split_heads(t).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).flatten(2)

    def _xformers(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        import xformers.ops

        q, k, v = (self._split_heads(t).contiguous() for t in (q, k, v))
        return xformers.ops.memory_efficient_attention(q, k, v).flatten(2)


class GEGLU(nn.Module):
    """Gated GELU: ``proj`` to twice the width, then ``value * gelu(gate)``."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim_in) -> (..., dim_out)."""
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """``net.0`` GEGLU to 4x width, ``net.1`` dropout, ``net.2`` Linear back."""

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * 4), nn.Dropout(dropout), nn.Linear(dim * 4, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim)."""
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention and GEGLU feed-forward, each with a residual.

    Submodules are defined in SGM's and kohya's order (``attn1``, ``ff``, ``attn2``, ``norm1..3``):
    the order of ``named_modules()`` is the order in which plugins create LoRA modules.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, head_dim, dropout)
        self.ff = FeedForward(dim, dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, head_dim, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) tokens attending to (B, T, context_dim) -> (B, N, dim)."""
        return _run_maybe_checkpointed(self, self._forward, x, context)

    def _forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    """SGM ``SpatialTransformer``: GroupNorm, ``proj_in``, transformer blocks, ``proj_out``, residual.

    Args:
        channels: Channels of the feature map (= transformer width).
        depth: Number of ``BasicTransformerBlock``\\ s.
        head_dim: Channels per head.
        context_dim: Width of the text conditioning.
        groups: GroupNorm groups.
        linear: Linear ``proj_in``/``proj_out`` (SDXL) instead of 1x1 convs.
        dropout: Attention/feed-forward dropout.
    """

    def __init__(self, channels: int, depth: int, head_dim: int, context_dim: int, groups: int,
                 linear: bool = True, dropout: float = 0.0):
        super().__init__()
        self.use_linear = linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)
        heads = channels // head_dim
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads, head_dim, context_dim, dropout) for _ in range(depth)
        )
        self.proj_out = nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) feature map and (B, T, context_dim) context -> (B, C, H, W)."""
        batch, channels, height, width = x.shape
        h = self.norm(x)
        if not self.use_linear:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        if self.use_linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear:
            h = self.proj_out(h)
        h = h.reshape(batch, height, width, channels).permute(0, 3, 1, 2).contiguous()
        if not self.use_linear:
            h = self.proj_out(h)
        return h + x


class Downsample2D(nn.Module):
    """Halve the resolution with a stride-2 3x3 conv (``op``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))."""
        return self.op(x)


class Upsample2D(nn.Module):
    """Double the resolution (nearest) and apply a 3x3 conv (``conv``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """One entry of ``input_blocks``/``output_blocks``/``middle_block``: passes each layer what it needs."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Run the layers in order: ResNets get ``emb``, transformers get ``context``."""
        for layer in self:
            if isinstance(layer, ResnetBlock2D):
                x = layer(x, emb)
            elif isinstance(layer, Transformer2DModel):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class SdxlUNet(nn.Module):
    """The SDXL UNet (SGM ``UNetModel``) with kohya-compatible module paths and class names.

    Layout for the default config: ``input_blocks.0`` conv_in; per level ``num_res_blocks`` ×
    (ResNet [+ transformer]) then a ``Downsample2D`` except on the last level; ``middle_block``
    ResNet, transformer, ResNet; ``output_blocks`` mirror the input side with ``num_res_blocks + 1``
    blocks per level, each taking the concatenated skip connection, with an ``Upsample2D`` closing
    every level but level 0; ``out`` GroupNorm, SiLU, conv.

    Args:
        config: Sizes; see :class:`SdxlUNetConfig`.
    """

    def __init__(self, config: SdxlUNetConfig):
        super().__init__()
        self.config = config
        c = config
        emb_dim = c.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(c.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Sequential(
            nn.Sequential(nn.Linear(c.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        )
        self.input_blocks, skip_channels = self._build_input_blocks()
        top = c.level_channels[-1]
        self.middle_block = TimestepEmbedSequential(
            self._resnet(top, top),
            self._transformer(top, c.transformer_depth_middle),
            self._resnet(top, top),
        )
        self.output_blocks = self._build_output_blocks(skip_channels)
        self.out = nn.Sequential(
            nn.GroupNorm(c.norm_num_groups, c.model_channels),
            nn.SiLU(),
            nn.Conv2d(c.model_channels, c.out_channels, 3, padding=1),
        )

    def _resnet(self, in_channels: int, out_channels: int) -> ResnetBlock2D:
        c = self.config
        return ResnetBlock2D(in_channels, out_channels, c.time_embed_dim, c.norm_num_groups, c.dropout)

    def _transformer(self, channels: int, depth: int) -> Transformer2DModel:
        c = self.config
        return Transformer2DModel(
            channels, depth, c.num_head_channels, c.context_dim, c.norm_num_groups,
            c.use_linear_in_transformer, c.dropout,
        )

    def _build_input_blocks(self) -> tuple[nn.ModuleList, list[int]]:
        """Return ``input_blocks`` and the channel count of each skip connection they produce."""
        c = self.config
        blocks = [TimestepEmbedSequential(nn.Conv2d(c.in_channels, c.model_channels, 3, padding=1))]
        skips = [c.model_channels]
        ch = c.model_channels
        for level, (level_ch, depth) in enumerate(zip(c.level_channels, c.transformer_depth)):
            for _ in range(c.num_res_blocks):
                layers = [self._resnet(ch, level_ch)]
                if depth > 0:
                    layers.append(self._transformer(level_ch, depth))
                blocks.append(TimestepEmbedSequential(*layers))
                ch = level_ch
                skips.append(ch)
            if level < len(c.level_channels) - 1:
                blocks.append(TimestepEmbedSequential(Downsample2D(ch)))
                skips.append(ch)
        return nn.ModuleList(blocks), skips

    def _build_output_blocks(self, skip_channels: list[int]) -> nn.ModuleList:
        """Build ``output_blocks``, consuming ``skip_channels`` from the end."""
        c = self.config
        skips = list(skip_channels)
        blocks = []
        ch = c.level_channels[-1]
        for level in reversed(range(len(c.level_channels))):
            level_ch, depth = c.level_channels[level], c.transformer_depth[level]
            for i in range(c.num_res_blocks + 1):
                layers = [self._resnet(ch + skips.pop(), level_ch)]
                ch = level_ch
                if depth > 0:
                    layers.append(self._transformer(level_ch, depth))
                if level > 0 and i == c.num_res_blocks:
                    layers.append(Upsample2D(ch))
                blocks.append(TimestepEmbedSequential(*layers))
        return nn.ModuleList(blocks)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the parameters (of ``time_embed.0.weight``)."""
        return self.time_embed[0].weight.dtype

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.time_embed[0].weight.device

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Checkpoint every ResNet and transformer block in training mode (non-reentrant).

        Works with a frozen UNet and trainable LoRA modules inside it: the non-reentrant variant
        does not need inputs that require grad.
        """
        for module in self.modules():
            if isinstance(module, (ResnetBlock2D, BasicTransformerBlock)):
                module.gradient_checkpointing = bool(enabled)

    def set_attention_backend(self, backend: str) -> None:
        """Choose the attention kernel: ``"sdpa"`` (``F.scaled_dot_product_attention``) or ``"xformers"``.

        Raises:
            UserError: the name is unknown, or ``"xformers"`` is asked for but not installed.
        """
        if backend not in ("sdpa", "xformers"):
            raise UserError(f"attention backend {backend!r}: use 'sdpa' or 'xformers'")
        if backend == "xformers":
            try:
                importlib.import_module("xformers.ops")
            except ImportError as exc:
                raise UserError(
                    f"--xformers: the 'xformers' package is not installed or broken ({exc}); "
                    "pip install xformers, or use --sdpa"
                ) from exc
        for module in self.modules():
            if isinstance(module, CrossAttention):
                module.attention_backend = backend

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The weight dtype, or the input's when weights are stored in a non-compute dtype (fp8)."""
        return self.dtype if self.dtype in _COMPUTE_DTYPES else x.dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predict noise (or v) for noisy latents.

        Args:
            x: (B, in_channels, H, W) noisy latents; H and W divisible by ``2 ** (levels - 1)``.
            timesteps: (B,) or scalar timesteps, int or float.
            context: (B, T, context_dim) text conditioning.
            y: (B, adm_in_channels) pooled text embedding + size embeddings.

        Returns:
            (B, out_channels, H, W) in the dtype of ``x``.
        """
        dtype = self._compute_dtype(x)
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])
        t_emb = timestep_embedding(timesteps, self.config.model_channels, freq_shift=self.config.timestep_freq_shift)
        emb = self.time_embed(t_emb.to(dtype)) + self.label_emb(y.to(dtype))
        h = x.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h).to(x.dtype)

"""CLIP text encoders with the transformers-4.x module layout.

Network plugins (``networks.lora``, ``lycoris.kohya``) find their targets by module path and class
name, and the key names they write must carry the ``text_model.`` level that transformers >= 5
removed from its ``CLIPTextModel``. These classes rebuild that layout (NETWORKS.md §1) so that
``state_dict()`` keys equal the ``text_model.*`` keys of a single-file checkpoint (FORMAT.md §10).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


@dataclass
class ClipTextConfig:
    """Size and behaviour of a CLIP text transformer.

    Attributes:
        vocab_size: Number of token ids.
        hidden_size: Width D of the token states.
        intermediate_size: Hidden width of the MLP.
        num_hidden_layers: Number of encoder layers.
        num_attention_heads: Attention heads per layer (D must divide evenly).
        max_position_embeddings: Sequence length L of the position table.
        hidden_act: ``"quick_gelu"`` (OpenAI CLIP) or ``"gelu"`` (OpenCLIP).
        layer_norm_eps: Epsilon of every LayerNorm.
        projection_dim: Output width of ``text_projection``; ``None`` when the model has none.
        eos_token_id: Id whose first occurrence gives the pooled output.
    """

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = None
    eos_token_id: int = 49407

    @classmethod
    def clip_l(cls) -> "ClipTextConfig":
        """OpenAI CLIP ViT-L/14 text tower (SD1 TE, SDXL TE1)."""
        return cls()

    @classmethod
    def openclip_h(cls) -> "ClipTextConfig":
        """OpenCLIP ViT-H/14 text tower as SD2 loads it: 23 of its 24 layers."""
        return cls(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                   num_attention_heads=16, hidden_act="gelu")

    @classmethod
    def openclip_bigg(cls) -> "ClipTextConfig":
        """OpenCLIP ViT-bigG/14 text tower with its projection (SDXL TE2)."""
        return cls(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                   num_attention_heads=20, hidden_act="gelu", projection_dim=1280)

    @classmethod
    def tiny(cls, projection_dim: int | None = None, hidden_act: str = "quick_gelu") -> "ClipTextConfig":
        """A 3-layer, 32-wide model for tests; full vocabulary and 77 positions."""
        return cls(hidden_size=32, intermediate_size=37, num_hidden_layers=3,
                   num_attention_heads=4, hidden_act=hidden_act, projection_dim=projection_dim)

    def to_dict(self) -> dict[str, object]:
        """Plain dict of all fields (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> "ClipTextConfig":
        """Build from :meth:`to_dict` output; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class ClipTextOutput:
    """What the text models return.

    Attributes:
        last_hidden_state: ``(B, L, D)`` output of the final LayerNorm.
        pooled_output: ``(B, D)`` ``last_hidden_state`` at the first EOS position of each row.
        hidden_states: ``num_hidden_layers + 1`` tensors ``(B, L, D)`` when asked for: the
            embeddings output, then each layer's output (no final LayerNorm); else ``None``.
        text_embeds: ``(B, projection_dim)`` projected pooled output (WithProjection only).
    """

    last_hidden_state: torch.Tensor
    pooled_output: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    text_embeds: torch.Tensor | None = None


class QuickGELUActivation(nn.Module):
    """OpenAI CLIP's ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise; any shape."""
        return x * torch.sigmoid(1.702 * x)


def _activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELUActivation()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown hidden_act {name!r}; use 'quick_gelu' or 'gelu'")


class CLIPTextEmbeddings(nn.Module):
    """Token plus learned position embeddings: ids ``(B, L)`` -> ``(B, L, D)``."""

    def __init__(self, config: ClipTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embed ``input_ids`` ``(B, L)``; positions are ``0 .. L-1``."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)[None]


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, config: ClipTextConfig):
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        # kohya-compat: definition order k, v, q, out fixes named_modules() order (LoRA key order).
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend ``x`` ``(B, L, D)`` to itself with a causal mask; returns ``(B, L, D)``."""
        q, k, v = (self._heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(x.shape))


class CLIPMLP(nn.Module):
    """``fc2(act(fc1(x)))`` with the configured activation."""

    def __init__(self, config: ClipTextConfig):
        super().__init__()
        self.activation_fn = _activation(config.hidden_act)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, L, D)`` to ``(B, L, D)``."""
        return self.fc2(self.activation_fn(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LayerNorm residual block: attention, then MLP."""

    def __init__(self, config: ClipTextConfig):
        super().__init__()
        # kohya-compat: transformers' definition order, so named_modules() matches 4.x exactly.
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, L, D)`` to ``(B, L, D)``."""
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    """The stack of encoder layers, with optional per-layer gradient checkpointing."""

    def __init__(self, config: ClipTextConfig):
        super().__init__()
        count = config.num_hidden_layers
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(count))
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, keep_all: bool = False) -> list[torch.Tensor]:
        """Run all layers on ``x`` ``(B, L, D)``.

        Returns:
            ``[x, out_0, …, out_{n-1}]`` when ``keep_all``, else ``[last output]``.
        """
        states = [x] if keep_all else []
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
            if keep_all:
                states.append(x)
        return states if keep_all else [x]


class CLIPTextTransformer(nn.Module):
    """Embeddings, encoder and final LayerNorm; pools at the first EOS token."""

    def __init__(self, config: ClipTextConfig):
        super().__init__()
        self.config = config
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: Tensor, output_hidden_states: bool = False) -> ClipTextOutput:
        """Encode ``input_ids`` ``(B, L)``; see :class:`ClipTextOutput`."""
        states = self.encoder(self.embeddings(input_ids), keep_all=output_hidden_states)
        last = self.final_layer_norm(states[-1])
        # sd-train: pool at the FIRST eos id (correct when pad != eos), never argmax of the ids.
        eos_pos = (input_ids == self.config.eos_token_id).int().argmax(dim=-1)
        pooled = last[torch.arange(last.shape[0], device=last.device), eos_pos]
        hidden = tuple(states) if output_hidden_states else None
        return ClipTextOutput(last_hidden_state=last, pooled_output=pooled, hidden_states=hidden)


class _TextModelBase(nn.Module):
    """Shared helpers of the two public text models."""

    def __init__(self, config: ClipTextConfig):
        super().__init__()
        self.config = config
        self.text_model = CLIPTextTransformer(config)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each encoder layer in backward (transformers' method name; kwargs ignored)."""
        self.text_model.encoder.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Turn per-layer gradient checkpointing off."""
        self.text_model.encoder.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether per-layer gradient checkpointing is on."""
        return self.text_model.encoder.gradient_checkpointing

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding table ``(vocab_size, D)`` (an ``nn.Embedding`` unless tokens were added)."""
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, module: nn.Module) -> None:
        """Replace the token embedding module (ids ``(B, L)`` -> ``(B, L, D)``, with a ``weight``)."""
        self.text_model.embeddings.token_embedding = module

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the token embedding weights."""
        return self.text_model.embeddings.token_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        """Device of the token embedding weights."""
        return self.text_model.embeddings.token_embedding.weight.device


class CLIPTextModel(_TextModelBase):
    """CLIP text model without projection (SD1/SD2 TE, SDXL TE1).

    Args:
        config: Model size; see :class:`ClipTextConfig`.
    """

    def forward(self, input_ids: Tensor, output_hidden_states: bool = False) -> ClipTextOutput:
        """Encode ``input_ids`` ``(B, L)`` int64; see :class:`ClipTextOutput`."""
        return self.text_model(input_ids, output_hidden_states=output_hidden_states)


class CLIPTextModelWithProjection(_TextModelBase):
    """CLIP text model plus ``text_projection`` (SDXL TE2).

    Args:
        config: Model size; ``projection_dim`` must be set.
    """

    def __init__(self, config: ClipTextConfig):
        if config.projection_dim is None:
            raise ValueError("CLIPTextModelWithProjection needs config.projection_dim")
        super().__init__(config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)

    def forward(self, input_ids: Tensor, output_hidden_states: bool = False) -> ClipTextOutput:
        """Encode ``input_ids`` ``(B, L)``; also sets ``text_embeds`` ``(B, projection_dim)``."""
        out = self.text_model(input_ids, output_hidden_states=output_hidden_states)
        out.text_embeds = self.text_projection(out.pooled_output)
        return out

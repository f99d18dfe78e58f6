"""Target discovery, kohya key names, block indices and ``network_args`` parsing for ``networks.lora``.

Everything here is pure (no module patching). Targets are found by **class name**, exactly as
kohya-ss/sd-scripts ``networks/lora.py`` does (NETWORKS.md §3), so key names match kohya's files.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from torch import nn

from library.errors import UserError

UNET_PARENTS = ("Transformer2DModel",)
UNET_CONV_PARENTS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TE_PARENTS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
LEAF_CLASSES = ("Linear", "Conv2d")

_SD_LAYOUT = ("25 values: 0 = unused, 1-11 = down_blocks (3 per block), 12 = mid_block, "
              "13-24 = up_blocks (3 per block)")
_SDXL_LAYOUT = ("23 values: 0 = time_embed/label_emb, 1-9 = input_blocks 0-8, 10-12 = middle_block 0-2, "
                "13-21 = output_blocks 0-8, 22 = out")
_RE_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")
_PRESETS = ("cosine", "sine", "linear", "reverse_linear", "zeros")


@dataclass(frozen=True)
class Target:
    """One leaf layer that gets a LoRA module: kohya ``name`` (no dots), the frozen ``Linear``/``Conv2d``
    ``module``, and ``is_conv_kxk`` (a Conv2d whose kernel is not 1×1, which uses the conv rank)."""

    name: str
    module: nn.Module
    is_conv_kxk: bool


def lora_name(prefix: str, parent_path: str, child_path: str) -> str:
    """kohya's key name: ``prefix.parent.child`` with every ``.`` replaced by ``_``."""
    return f"{prefix}.{parent_path}.{child_path}".replace(".", "_")


def find_targets(root: nn.Module, prefix: str, parents: Iterable[str], path_prefix: str = "") -> list[Target]:
    """Find every ``Linear``/``Conv2d`` below a module whose class name is in ``parents``.

    Args:
        root: UNet or text encoder; ``prefix``: ``lora_unet``, ``lora_te``, ``lora_te1`` or ``lora_te2``.
        parents: parent class names; ``path_prefix``: prepended to module paths (``text_model.``).

    Raises:
        ValueError: two targets with the same name (nested parents).
    """
    parents = tuple(parents)
    found: dict[str, Target] = {}
    for path, module in root.named_modules():
        if module.__class__.__name__ not in parents:
            continue
        for child_path, child in module.named_modules():
            cls = child.__class__.__name__
            if cls not in LEAF_CLASSES:
                continue
            name = lora_name(prefix, path_prefix + path, child_path)
            if name in found:
                raise ValueError(f"duplicated LoRA module name {name}")
            kxk = cls == "Conv2d" and tuple(child.kernel_size) != (1, 1)
            found[name] = Target(name, child, kxk)
    return list(found.values())


def text_encoder_path_prefix(te: nn.Module) -> str:
    """``""`` when the TE has a ``text_model`` child, else ``"text_model."`` so names keep that level."""
    has_level = any(n == "text_model" for n, _ in te.named_children())
    return "" if has_level else "text_model."  # kohya-compat: transformers>=5 dropped the level


def is_sdxl_unet(unet: nn.Module | None) -> bool:
    """True for an SGM-named UNet (has ``input_blocks``)."""
    return unet is not None and any(n == "input_blocks" for n, _ in unet.named_children())


def block_index(name: str, is_sdxl: bool) -> int:
    """Block index of a UNet LoRA module name (NETWORKS.md §5); -1 when it belongs to no block."""
    if is_sdxl:
        if not name.startswith("lora_unet_"):
            return -1
        rest = name[len("lora_unet_"):]
        for head, base in (("input_blocks_", 1), ("middle_block_", 10), ("output_blocks_", 13)):
            if rest.startswith(head):
                return base + int(rest[len(head):].split("_")[0])
        if rest.startswith(("time_embed_", "label_emb_")):
            return 0
        return 22 if rest.startswith("out_") else -1
    m = _RE_UPDOWN.search(name)
    if m:
        i, kind, j = int(m.group(2)), m.group(3), int(m.group(4))
        idx = 3 * i + (2 if kind in ("upsamplers", "downsamplers") else j)
        return 1 + idx if m.group(1) == "down" else 13 + idx
    return 12 if "mid_block_" in name else -1


# ----------------------------------------------------------------------------- network_args parsing


def _fail(key: str, value: Any, what: str) -> UserError:
    return UserError(f"--network_args {key}={value}: {what}")


def parse_int(key: str, value: Any) -> int:
    """Parse a non-negative int from a string, raising one clear UserError."""
    try:
        out = int(str(value).strip())
    except ValueError:
        raise _fail(key, value, "expected an integer, e.g. 8") from None
    if out < 0:
        raise _fail(key, value, "must be >= 0")
    return out


def parse_float(key: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    """Parse a finite float within ``[lo, hi)`` (when given), raising one clear UserError."""
    try:
        out = float(str(value).strip())
    except ValueError:
        raise _fail(key, value, "expected a number, e.g. 0.1") from None
    if not math.isfinite(out) or (lo is not None and out < lo) or (hi is not None and out >= hi):
        bounds = f"in [{lo}, {hi})" if hi is not None else f">= {lo}"
        raise _fail(key, value, f"must be a finite number {bounds}")
    return out


def _parse_list(key: str, value: Any, n: int, layout: str, conv) -> list:
    out = [conv(key, p) for p in str(value).split(",")]
    if len(out) != n:
        raise _fail(key, value, f"expected exactly {n} comma-separated values ({layout}), got {len(out)}")
    return out


def lr_weight_preset(name_with_base: str, n: int) -> list[float] | None:
    """Expand ``cosine|sine|linear|reverse_linear|zeros[+base]`` into ``n`` weights; None if not a preset."""
    name, _, base = name_with_base.partition("+")
    if name not in _PRESETS:
        return None
    b = float(base) if base else 0.0
    ramp = [i / (n - 1) for i in range(n)]
    values = {
        "sine": [math.sin(math.pi / 2 * r) for r in ramp],
        "cosine": [math.sin(math.pi / 2 * r) for r in reversed(ramp)],
        "linear": ramp,
        "reverse_linear": list(reversed(ramp)),
        "zeros": [0.0] * n,
    }[name]
    return [v + b for v in values]


def _lr_list(key: str, value: Any, n: int, allow_preset: bool, log) -> list[float]:
    text = str(value).strip()
    if allow_preset and text.split("+")[0] in _PRESETS:
        try:
            weights = lr_weight_preset(text, n)
        except ValueError:
            raise _fail(key, value, "preset base after '+' must be a number, e.g. sine+.5") from None
    elif allow_preset and not re.match(r"^[\s\d.+\-eE,]+$", text):
        raise _fail(key, value, f"expected {n} comma-separated numbers or a preset ({', '.join(_PRESETS)})")
    else:
        weights = [parse_float(key, p, lo=0.0) for p in text.split(",")]
    if len(weights) != n:
        log.warning("%s has %d values, expected %d: %s", key, len(weights), n,
                    f"using the first {n}" if len(weights) > n else "padding with 1.0")
    return (weights + [1.0] * n)[:n]


def block_lr_weights(kwargs: Mapping[str, Any], is_sdxl: bool, log) -> list[float] | None:
    """Full per-block LR weight list (25 or 23 values) from down/mid/up_lr_weight, or None."""
    down, mid, up = (kwargs.get(k) for k in ("down_lr_weight", "mid_lr_weight", "up_lr_weight"))
    if down is None and mid is None and up is None:
        return None
    n, n_mid = (9, 3) if is_sdxl else (12, 1)
    d = _lr_list("down_lr_weight", down, n, True, log) if down is not None else [1.0] * n
    m = _lr_list("mid_lr_weight", mid, n_mid, False, log) if mid is not None else [1.0] * n_mid
    u = _lr_list("up_lr_weight", up, n, True, log) if up is not None else [1.0] * n
    full = [1.0] + d + m + u + [1.0] if is_sdxl else d + m + u
    threshold = parse_float("block_lr_zero_threshold", kwargs.get("block_lr_zero_threshold", 0.0) or 0.0)
    return [0.0 if w <= threshold else w for w in full]


@dataclass
class LoraArgs:
    """Parsed ``network_args`` of ``networks.lora`` (NETWORKS.md §5). Lists have 25 (SD) or 23 (SDXL) entries."""

    conv_dim: int | None = None
    conv_alpha: float | None = None
    rank_dropout: float | None = None
    module_dropout: float | None = None
    block_dims: list[int] | None = None
    block_alphas: list[float] | None = None
    conv_block_dims: list[int] | None = None
    conv_block_alphas: list[float] | None = None
    block_lr_weight: list[float] | None = None
    loraplus_lr_ratio: float | None = None
    loraplus_unet_lr_ratio: float | None = None
    loraplus_text_encoder_lr_ratio: float | None = None


def _opt(kwargs: Mapping[str, Any], key: str, parser, *a):
    value = kwargs.get(key)
    return None if value is None or str(value).strip().lower() in ("", "none") else parser(key, value, *a)


def parse_network_args(kwargs: Mapping[str, Any], network_dim: int, network_alpha: float,
                       is_sdxl: bool, log) -> LoraArgs:
    """Parse the string ``network_args`` of ``networks.lora``; unknown keys are ignored.

    Raises:
        UserError: a bad value, naming the key, the value and what is expected.
    """
    a = LoraArgs()
    a.conv_dim = _opt(kwargs, "conv_dim", parse_int)
    if a.conv_dim is not None:
        a.conv_alpha = _opt(kwargs, "conv_alpha", parse_float, 0.0)
        a.conv_alpha = 1.0 if a.conv_alpha is None else a.conv_alpha
    a.rank_dropout = _opt(kwargs, "rank_dropout", parse_float, 0.0, 1.0)
    a.module_dropout = _opt(kwargs, "module_dropout", parse_float, 0.0, 1.0)
    for key in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio"):
        setattr(a, key, _opt(kwargs, key, parse_float, 0.0))
    a.block_lr_weight = block_lr_weights(kwargs, is_sdxl, log)
    if kwargs.get("block_dims") is None and a.block_lr_weight is None:
        return a
    n, layout = (23, _SDXL_LAYOUT) if is_sdxl else (25, _SD_LAYOUT)
    a.block_dims = _opt(kwargs, "block_dims", _parse_list, n, layout, parse_int) or [network_dim] * n
    a.block_alphas = (_opt(kwargs, "block_alphas", _parse_list, n, layout, lambda k, v: parse_float(k, v, 0.0))
                      or [network_alpha] * n)
    a.conv_block_dims = _opt(kwargs, "conv_block_dims", _parse_list, n, layout, parse_int)
    if a.conv_block_dims is None and a.conv_dim is not None:
        a.conv_block_dims = [a.conv_dim] * n
    if a.conv_block_dims is not None:
        alphas = _opt(kwargs, "conv_block_alphas", _parse_list, n, layout, lambda k, v: parse_float(k, v, 0.0))
        a.conv_block_alphas = alphas or [a.conv_alpha if a.conv_alpha is not None else 1.0] * n
    if a.block_lr_weight is not None:
        for i, w in enumerate(a.block_lr_weight):
            if w == 0:
                a.block_dims[i] = 0
                if a.conv_block_dims is not None:
                    a.conv_block_dims[i] = 0
    return a


# ----------------------------------------------------------------------------- SDXL diffusers -> SGM names

_RESNET_PARTS = {"in_layers.2": "conv1", "out_layers.3": "conv2", "emb_layers.1": "time_emb_proj",
                 "skip_connection": "conv_shortcut", "in_layers.0": "norm1", "out_layers.0": "norm2"}
_KIND = {"ResnetBlock2D": "resnets", "Transformer2DModel": "attentions",
         "Downsample2D": "downsamplers", "Upsample2D": "upsamplers"}


def _diffusers_block(path: str, cls: str, level: int) -> str | None:
    """diffusers path of an SGM block-level module (``input_blocks.4.1`` -> ``down_blocks.1.attentions.0``)."""
    parts = path.split(".")
    kind = _KIND.get(cls)
    if kind is None:
        return None
    if parts[0] == "middle_block" and len(parts) == 2:
        m = int(parts[1])
        return "mid_block.attentions.0" if kind == "attentions" else f"mid_block.resnets.{m // 2}"
    if len(parts) != 3 or parts[0] not in ("input_blocks", "output_blocks"):
        return None
    n = int(parts[1])
    side, (b, r) = ("down", divmod(n - 1, level)) if parts[0] == "input_blocks" else ("up", divmod(n, level))
    return f"{side}_blocks.{b}.{kind}.{0 if kind in ('downsamplers', 'upsamplers') else r}"


def sdxl_diffusers_lora_names(unet: nn.Module, level: int = 3) -> dict[str, str]:
    """Map diffusers-named SDXL LoRA module names to SGM names, generated from the UNet's module tree.

    Args:
        unet: SGM-named SDXL UNet (``input_blocks`` …).
        level: modules per level, ``num_res_blocks + 1`` (3 for SDXL).

    Returns:
        ``{"lora_unet_down_blocks_1_attentions_0_proj_in": "lora_unet_input_blocks_4_1_proj_in", …}``
        for every ``Linear``/``Conv2d`` inside a ResNet, transformer, down- or upsampler block.
    """
    out: dict[str, str] = {}
    for path, block in unet.named_modules():
        diff = _diffusers_block(path, block.__class__.__name__, level)
        if diff is None:
            continue
        for child_path, leaf in block.named_modules():
            if leaf.__class__.__name__ not in LEAF_CLASSES or not child_path:
                continue
            if diff.endswith(("downsamplers.0", "upsamplers.0")):
                child_diff = "conv"
            else:
                child_diff = _RESNET_PARTS.get(child_path, child_path) if ".resnets." in diff else child_path
            out[lora_name("lora_unet", diff, child_diff)] = lora_name("lora_unet", path, child_path)
    return out

"""LoRA files as a per-module structure ``{name: (down, up, alpha)}`` (FORMAT.md §2, §8, §9).

Readers accept kohya (``lora_down``/``lora_up``), kohya-named ``lora_A``/``lora_B``, and
ControlLoRA-style ``down``/``up`` pairs; everything else is kept aside as ``extras``. Writers emit
kohya tensors with a floating-point ``alpha`` and recomputed ``sshs_*`` hashes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from library.errors import UserError
from library.io.safetensors_io import save_lora_file
from library.io.weights import read_weights

PAIRS = (("lora_down.weight", "lora_up.weight"), ("lora_A.weight", "lora_B.weight"), ("down", "up"))
KOHYA_PAIR = PAIRS[0]
_UNSUPPORTED_PARTS = ("hada_", "lokr_", "oft_", "dora_scale", "lora_mid", "a1.weight", "b1.weight",
                      "diff", "w_norm", "lora_magnitude_vector")
DTYPES = {"float": torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

Module = tuple  # (down Tensor, up Tensor, alpha float | None)


@dataclass
class LoraFile:
    """A loaded LoRA: modules, untouched extra tensors, metadata and the part names used per module."""

    modules: dict[str, Module]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    parts: dict[str, tuple[str, str]] = field(default_factory=dict)
    path: str = ""

    def dtype(self) -> torch.dtype:
        """dtype of the first module's ``up`` (float32 for an empty file)."""
        return next((m[1].dtype for m in self.modules.values()), torch.float32)


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a ``.safetensors`` (with metadata) or a ``.ckpt/.pt/.pth`` state dict (weights only)."""
    sd, metadata = read_weights(path)
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict):
        raise UserError(f"{path}: does not contain a state dict")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}, metadata


def detect_format(keys) -> str:
    """``kohya``, ``peft``, ``diffusers_old``, ``lycoris`` or ``unknown`` from the key grammar."""
    keys = list(keys)
    if any("." in k and k.split(".", 1)[1].startswith(("hada_", "lokr_", "oft_")) for k in keys):
        return "lycoris"
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        return "kohya"
    if any(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys):
        return "peft"
    if any(".lora.down." in k or ".lora_linear_layer.down." in k or "_lora.down." in k for k in keys):
        return "diffusers_old"
    return "unknown"


def unsupported_keys(keys) -> list[str]:
    """Keys with no plain-LoRA meaning (LoHa, LoKr, OFT, DoRA, Tucker, ``bundle_emb``, …)."""
    out = []
    for k in keys:
        tail = k.split(".", 1)[1] if "." in k else k
        if k.startswith("bundle_emb.") or any(tail.startswith(p) for p in _UNSUPPORTED_PARTS):
            out.append(k)
    return out


def group_modules(tensors: Mapping[str, torch.Tensor], where: str = "") -> LoraFile:
    """Group ``<module>.<down part>`` / ``<module>.<up part>`` / ``<module>.alpha`` into modules.

    Raises:
        UserError: a module has only one of its two factors.
    """
    lf = LoraFile(modules={})
    used: set[str] = set()
    halves: dict[str, dict] = {}
    for key in tensors:
        for dsuf, usuf in PAIRS:
            for i, suf in enumerate((dsuf, usuf)):
                if key.endswith("." + suf):
                    halves.setdefault(key[: -len(suf) - 1], {})[i] = (key, dsuf, usuf)
    for name, h in halves.items():
        if len(h) != 2:
            raise UserError(f"{where}: module {name} has only one of its two LoRA factors; the file is incomplete")
        (dk, dsuf, usuf), (uk, _, _) = h[0], h[1]
        alpha_t = tensors.get(name + ".alpha")
        alpha = float(alpha_t) if alpha_t is not None else None
        lf.modules[name] = (tensors[dk], tensors[uk], alpha)
        lf.parts[name] = (dsuf, usuf)
        used.update((dk, uk, name + ".alpha") if alpha_t is not None else (dk, uk))
    lf.extras = {k: v for k, v in tensors.items() if k not in used}
    return lf


def read_lora(path: str | os.PathLike) -> LoraFile:
    """Load a LoRA file into a :class:`LoraFile` (raises UserError when it has no LoRA modules)."""
    tensors, metadata = load_tensors(path)
    lf = group_modules(tensors, str(path))
    if not lf.modules:
        raise UserError(f"{path}: no LoRA modules found (expected lora_down/lora_up or lora_A/lora_B keys)")
    lf.metadata, lf.path = dict(metadata), str(path)
    return lf


def rank_of(module: Module) -> int:
    """LoRA rank (``down.shape[0]``)."""
    return int(module[0].shape[0])


def is_kxk(module: Module) -> bool:
    """True for a k×k (k > 1) conv module (LoCon)."""
    return module[0].dim() == 4 and tuple(module[0].shape[2:]) != (1, 1)


def check_finite(modules: Mapping[str, Module], where: str) -> None:
    """Raise UserError naming the first module with a NaN/Inf factor or alpha."""
    for name, (down, up, alpha) in modules.items():
        bad = not (torch.isfinite(down).all() and torch.isfinite(up).all())
        if bad or (alpha is not None and not torch.isfinite(torch.tensor(alpha))):
            raise UserError(f"{where}: module {name} has NaN or Inf values; nothing was written")


def kohya_tensors(modules: Mapping[str, Module], dtype: torch.dtype | None = None,
                  parts: Mapping[str, tuple[str, str]] | None = None) -> dict[str, torch.Tensor]:
    """Flat state dict of modules; ``alpha`` written as a 0-dim float tensor in the output dtype.

    kohya parts always get an ``alpha`` (the rank when missing); other part names only when known.
    """
    out: dict[str, torch.Tensor] = {}
    for name, (down, up, alpha) in modules.items():
        dsuf, usuf = (parts or {}).get(name, KOHYA_PAIR)
        dt = dtype or up.dtype
        out[f"{name}.{dsuf}"] = down.detach().to("cpu", dt).contiguous()
        out[f"{name}.{usuf}"] = up.detach().to("cpu", dt).contiguous()
        if alpha is None and (dsuf, usuf) != KOHYA_PAIR:
            continue  # PEFT-named parts cannot carry an alpha key (diffusers rejects the file)
        a = float(alpha) if alpha is not None else float(down.shape[0])
        out[f"{name}.alpha"] = torch.tensor(a, dtype=dt if dt.is_floating_point else torch.float32)
    return out


def write_lora(path: str | os.PathLike, modules: Mapping[str, Module], metadata: Mapping[str, str] | None,
               dtype: torch.dtype | None = None, extras: Mapping[str, torch.Tensor] | None = None,
               parts: Mapping[str, tuple[str, str]] | None = None) -> None:
    """Check and write a kohya LoRA atomically (hashes recomputed for ``.safetensors``)."""
    check_finite(modules, str(path))
    tensors = kohya_tensors(modules, dtype, parts)
    tensors.update(extras or {})
    save_lora_file(tensors, path, metadata or {})


def check_output(path: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to replace an existing output unless ``--overwrite`` was given."""
    # sd-train: kohya's tools overwrite silently; we require --overwrite.
    if Path(path).exists() and not overwrite:
        raise UserError(f"{path}: output exists; pass --overwrite to replace it")

"""What a saved LoRA holds: its metadata in short, and how much each block changed the base model.

The change of one module is ‖ΔW‖_F = scale · ‖up · down‖_F, computed from two rank×rank Gram matrices
(‖UD‖² = Σ (UᵀU) ∘ (DDᵀ)), so even a full SDXL LoRA takes well under a second. Blocks follow the
26-slot layout of the block-weight tools (IN00–IN11, MID, OUT00–OUT11); text encoders get their own rows.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import torch

from library.lora.algebra import lora_scale
from library.lora.convert import lbw_block_index
from library.lora.file import read_lora

META_KEYS = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args", "ss_base_model_version",
             "ss_sd_model_name", "ss_optimizer", "ss_learning_rate", "ss_unet_lr", "ss_text_encoder_lr",
             "ss_lr_scheduler", "ss_lr_warmup_steps", "ss_resolution", "ss_num_train_images", "ss_num_batches_per_epoch",
             "ss_epoch", "ss_steps", "ss_max_train_steps", "ss_seed", "ss_mixed_precision", "ss_training_comment",
             "sshs_model_hash", "modelspec.title", "modelspec.architecture")
_TE_RE = re.compile(r"^(lora_te[12]?)_")


def module_norm(down: torch.Tensor, up: torch.Tensor, alpha: float | None) -> float:
    """‖scale · up · down‖_F of one module (conv factors flattened to matrices)."""
    d = down.float().reshape(down.shape[0], -1)
    u = up.float().reshape(up.shape[0], -1)
    gram = (u.T @ u) * (d @ d.T)
    return float(gram.sum().clamp_min(0).sqrt()) * lora_scale(alpha, d.shape[0])


def block_label(name: str) -> str:
    """``TE``/``TE1``/``TE2``, ``IN04``, ``MID``, ``OUT07`` or ``other`` for a kohya module name."""
    te = _TE_RE.match(name)
    if te:
        return te.group(1).replace("lora_te", "TE")
    slot = lbw_block_index(name, sdxl="input_blocks" in name or "output_blocks" in name or "middle_block" in name)
    if 1 <= slot <= 12:
        return f"IN{slot - 1:02d}"
    if slot == 13:
        return "MID"
    if 14 <= slot <= 25:
        return f"OUT{slot - 14:02d}"
    return "other"


def _order(label: str) -> tuple:
    kinds = {"TE": 0, "TE1": 0, "TE2": 1, "IN": 2, "MID": 3, "OUT": 4, "other": 5}
    head = label.rstrip("0123456789")
    return kinds.get(label, kinds.get(head, 5)), label


def block_norms(modules: dict) -> list[tuple[str, float, int]]:
    """``(block, ‖ΔW‖ over its modules, module count)`` in model order."""
    squares: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for name, (down, up, alpha) in modules.items():
        label = block_label(name)
        squares[label] += module_norm(down, up, alpha) ** 2
        counts[label] += 1
    return [(label, squares[label] ** 0.5, counts[label]) for label in sorted(squares, key=_order)]


def lora_summary(path: str | Path) -> dict:
    """Metadata (the keys users look at), module count, ranks and per-block norms of a LoRA file."""
    lf = read_lora(path)
    ranks = sorted({int(down.shape[0]) for down, _, _ in lf.modules.values()})
    return {"path": str(path), "bytes": Path(path).stat().st_size, "modules": len(lf.modules), "ranks": ranks,
            "metadata": {k: lf.metadata[k] for k in META_KEYS if lf.metadata.get(k) not in (None, "", "None")},
            "blocks": block_norms(lf.modules)}

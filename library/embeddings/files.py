"""Embedding files in every layout the UIs and libraries read, and the ``bundle_emb`` keys of LoRA files.

Layouts (one ``(n, D)`` tensor of ``n`` vectors per text encoder):

- ``kohya``: what kohya's textual-inversion scripts write and A1111 / ComfyUI load: ``{"emb_params": rows}``
  for one text encoder (SD1/SD2) or ``{"clip_l": rows1, "clip_g": rows2}`` (SDXL), as ``.safetensors`` or a
  plain ``.pt`` dict. The keys are each family's ``TextEncoderSlot.embedding_key``.
- ``a1111``: A1111's own ``.pt``: ``{"string_to_token": {"*": 265}, "string_to_param": {"*": rows}, "name",
  "step", ...}`` (one text encoder only).
- ``diffusers``: ``{token: rows}`` (``learned_embeds.safetensors``); SDXL writes the second text encoder's
  rows to a sibling file with ``_2`` before the suffix (``learned_embeds_2.safetensors``), as diffusers'
  SDXL textual-inversion script does.
- a LoRA file with ``bundle_emb.<name>.<tail>`` keys (A1111's Lora extension), read with ``name``.

``.pt``/``.bin`` files are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from library.errors import UserError
from library.io.safetensors_io import atomic_path
from library.io.weights import read_weights
from library.models.families import FAMILIES, TextEncoderSlot

LAYOUTS = ("kohya", "a1111", "diffusers")
BUNDLE_PREFIX = "bundle_emb."
A1111_TOKEN_ID = 265  # kohya-compat: the placeholder id A1111 stores in string_to_token


@dataclass
class Embedding:
    """The vectors of one embedding.

    Attributes:
        vectors: one ``(n, D)`` tensor per text encoder, in the family's text-encoder order.
        name: its name (A1111 prompts use the file name; diffusers the token).
        metadata: string metadata (safetensors header) to carry along.
    """

    vectors: tuple[torch.Tensor, ...]
    name: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Number of vectors (tokens) ``n``."""
        return self.vectors[0].shape[0]


def slots_for(count: int) -> tuple[TextEncoderSlot, ...]:
    """The text-encoder slots of the families with ``count`` text encoders (their embedding keys agree)."""
    for spec in FAMILIES.values():
        if len(spec.text_encoders) == count:
            return spec.text_encoders
    raise UserError(f"no model family has {count} text encoders; an embedding holds one or two sets of vectors")


def _as_rows(value, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() not in (1, 2):
        raise UserError(f"{where}: expected a (vectors, width) tensor, found {type(value).__name__}")
    return (value.unsqueeze(0) if value.dim() == 1 else value).detach().float().cpu()


def from_state(state: Mapping, name: str, where: str) -> Embedding:
    """An :class:`Embedding` from a loaded file's dict, whatever its layout (see the module docstring)."""
    if "string_to_param" in state:
        params = dict(state["string_to_param"])
        if len(params) != 1:
            raise UserError(f"{where}: string_to_param holds {len(params)} entries; expected one")
        return Embedding((_as_rows(next(iter(params.values())), where),), str(state.get("name") or name))
    for count in (2, 1):
        keys = [slot.embedding_key for slot in slots_for(count)]
        if all(k in state for k in keys):
            return Embedding(tuple(_as_rows(state[k], f"{where} [{k}]") for k in keys), name)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1:
        token, rows = next(iter(tensors.items()))
        return Embedding((_as_rows(rows, where),), name or token, {"token": token})
    raise UserError(f"{where}: not an embedding file (keys {', '.join(sorted(map(str, state))[:6])}); expected "
                    "emb_params, clip_l + clip_g, string_to_param or a single {token: vectors} entry")


def _load_dict(path: Path) -> tuple[dict, dict[str, str]]:
    state, metadata = read_weights(path, "embedding file not found")
    if not isinstance(state, dict):
        raise UserError(f"{path}: holds a {type(state).__name__}, not an embedding dict")
    return state, metadata


def read_bundle(state: Mapping[str, torch.Tensor], name: str | None, where: str) -> Embedding:
    """The ``bundle_emb.<name>.*`` embedding of a LoRA's tensors (``name`` may be omitted when there is one)."""
    names = sorted({k[len(BUNDLE_PREFIX):].split(".", 1)[0] for k in state if k.startswith(BUNDLE_PREFIX)})
    if name is None and len(names) == 1:
        name = names[0]
    if name not in names:
        raise UserError(f"{where}: no bundled embedding {name!r}; it bundles {', '.join(names) or 'none'}")
    prefix = f"{BUNDLE_PREFIX}{name}."
    inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    for count in (2, 1):
        tails = [slot.bundle_embedding_key for slot in slots_for(count)]
        if all(t in inner for t in tails):
            return Embedding(tuple(_as_rows(inner[t], f"{where} [{prefix}{t}]") for t in tails), name)
    raise UserError(f"{where}: bundled embedding {name!r} has keys {sorted(inner)}; expected clip_l + clip_g or "
                    "string_to_param.*")


def read_embedding(path: str | os.PathLike, name: str | None = None) -> Embedding:
    """Read an embedding file of any layout (a diffusers SDXL pair: give the first file).

    Args:
        path: ``.safetensors``, ``.pt`` or ``.bin``; a LoRA with ``bundle_emb`` keys works too.
        name: the bundled embedding to read from a LoRA file (optional when it bundles one).
    """
    p = Path(path)
    state, metadata = _load_dict(p)
    if any(str(k).startswith(BUNDLE_PREFIX) for k in state):
        emb = read_bundle(state, name, str(p))
    else:
        emb = from_state(state, p.stem, str(p))
        second = p.with_name(f"{p.stem}_2{p.suffix}")
        if len(emb.vectors) == 1 and "token" in emb.metadata and second.is_file():  # diffusers SDXL pair
            emb.vectors += from_state(_load_dict(second)[0], p.stem, str(second)).vectors
    emb.metadata = {**metadata, **emb.metadata}
    return emb


def layout_state(emb: Embedding, layout: str, token: str | None = None) -> list[dict]:
    """The dict(s) to write for ``layout`` (two for a diffusers SDXL pair).

    Raises:
        UserError: an unknown layout, or A1111's ``.pt`` layout for two text encoders.
    """
    if layout == "kohya":
        return [{slot.embedding_key: rows for slot, rows in zip(slots_for(len(emb.vectors)), emb.vectors)}]
    if layout == "diffusers":
        return [{token or emb.name: rows} for rows in emb.vectors]
    if layout == "a1111":
        if len(emb.vectors) != 1:
            raise UserError("A1111's .pt layout holds one text encoder; write SDXL embeddings with --to kohya "
                            "(clip_l + clip_g), which A1111 and ComfyUI load")
        return [{"string_to_token": {"*": A1111_TOKEN_ID}, "string_to_param": {"*": emb.vectors[0]},
                 "name": emb.name, "step": 0, "sd_checkpoint": None, "sd_checkpoint_name": None}]
    raise UserError(f"unknown embedding layout {layout!r}; use one of {', '.join(LAYOUTS)}")


def _write_one(state: dict, path: Path, dtype: torch.dtype | None, metadata: Mapping[str, str]) -> None:
    def cast(value):
        if isinstance(value, dict):
            return {k: cast(v) for k, v in value.items()}
        if isinstance(value, torch.Tensor):
            return value.detach().to("cpu", dtype or value.dtype).contiguous()
        return value

    state = cast(state)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".safetensors":
            if not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise UserError(f"{path}: this layout is a .pt dict; give a .pt output path")
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
        else:
            torch.save(state, tmp)


def write_embedding(emb: Embedding, path: str | os.PathLike, layout: str = "kohya", *, token: str | None = None,
                    dtype: torch.dtype | None = None, metadata: Mapping[str, str] | None = None) -> list[Path]:
    """Write ``emb`` in ``layout`` (atomically); ``.safetensors`` files carry ``metadata``.

    Returns:
        The paths written (two for a diffusers SDXL pair: ``path`` and ``{stem}_2{suffix}``).
    """
    p = Path(path)
    states = layout_state(emb, layout, token)
    paths = [p] + [p.with_name(f"{p.stem}_{i + 1}{p.suffix}") for i in range(1, len(states))]
    for state, target in zip(states, paths):
        _write_one(state, target, dtype, {**emb.metadata, **(metadata or {})})
    return paths


def bundle_keys(name: str, vectors: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{f"bundle_emb.{name}.{tail}": rows}`` for a LoRA file (A1111 loads it with the LoRA as ``name``)."""
    if not name or any(c in name for c in ". \t"):
        raise UserError(f"embedding name {name!r} cannot be bundled: A1111 splits bundle keys at '.'")
    return {f"{BUNDLE_PREFIX}{name}.{slot.bundle_embedding_key}": rows.detach().clone()  # own storage per key
            for slot, rows in zip(slots_for(len(vectors)), vectors)}

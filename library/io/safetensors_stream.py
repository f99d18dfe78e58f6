"""Streaming safetensors writer: header first, then tensors one at a time (TOOLS.md §1).

The layout reproduces ``safetensors.torch.save_file`` (checked byte for byte by the tests for
safetensors 0.8): tensors sorted by dtype in descending order of the library's ``Dtype`` enum,
then by name; compact JSON header with ``__metadata__`` first; header padded with spaces to a
multiple of 8 bytes. One difference: safetensors 0.8 writes the metadata keys in hash-map order
(it changes from run to run), sd-train writes them sorted, so files with more than one metadata
key match ``save_file`` in every byte except the order of those keys.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Iterable, Mapping, Sequence, Union

import torch

from library.errors import UserError
from library.io.safetensors_io import atomic_path

# Rank order of safetensors' Rust ``Dtype`` enum; tensors are written from the highest rank down.
_DTYPE_ORDER = ("BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
                "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64")
_TORCH_TO_ST = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
                torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32", torch.float32: "F32",
                torch.float64: "F64", torch.int64: "I64", torch.float8_e5m2: "F8_E5M2",
                torch.float8_e4m3fn: "F8_E4M3"}

PlanItem = tuple  # (name, torch.dtype, shape tuple)
TensorSource = Union[Callable[[str], torch.Tensor], Iterable[tuple]]


def st_dtype(dtype: torch.dtype) -> str:
    """safetensors dtype string (``"F32"``, ``"BF16"``, …) of a torch dtype."""
    try:
        return _TORCH_TO_ST[dtype]
    except KeyError:
        raise UserError(f"dtype {dtype} cannot be written to safetensors") from None


def canonical_order(header_plan: Sequence[PlanItem]) -> list[PlanItem]:
    """The plan sorted in the order ``safetensors`` lays tensors out (dtype rank desc, then name)."""
    return sorted(header_plan, key=lambda p: (-_DTYPE_ORDER.index(st_dtype(p[1])), p[0]))


def _nbytes(dtype: torch.dtype, shape: Sequence[int]) -> int:
    n = torch.empty((), dtype=dtype).element_size()
    for d in shape:
        n *= int(d)
    return n


def build_header(header_plan: Sequence[PlanItem], metadata: Mapping[str, str] | None) -> bytes:
    """Header bytes (8-byte length + padded JSON) for the plan in canonical order."""
    head: dict = {}
    if metadata is not None:
        head["__metadata__"] = {k: str(metadata[k]) for k in sorted(metadata)}
    offset = 0
    for name, dtype, shape in canonical_order(header_plan):
        size = _nbytes(dtype, shape)
        head[name] = {"dtype": st_dtype(dtype), "shape": [int(d) for d in shape], "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous()
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def _iterate(order: list[PlanItem], source: TensorSource):
    if callable(source):
        for name, _, _ in order:
            yield name, source(name)
        return
    yield from source


def write_streaming(path: str | os.PathLike, header_plan: Sequence[PlanItem], tensor_iter: TensorSource,
                    metadata: Mapping[str, str] | None = None) -> None:
    """Write a safetensors file tensor by tensor, atomically.

    Args:
        path: output file.
        header_plan: ``(name, dtype, shape)`` of every tensor.
        tensor_iter: either a function ``name -> tensor`` (called once per tensor in the canonical
            order) or an iterable of ``(name, tensor)`` pairs already in :func:`canonical_order`.
        metadata: ``__metadata__`` strings, or None for no metadata section.

    Raises:
        UserError: a tensor's name, dtype or shape differs from the plan.
    """
    order = canonical_order(header_plan)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(build_header(order, metadata))
        count = 0
        for (name, dtype, shape), (got_name, t) in zip(order, _iterate(order, tensor_iter)):
            if got_name != name or t.dtype != dtype or tuple(t.shape) != tuple(int(d) for d in shape):
                raise UserError(f"{path}: tensor {got_name} ({t.dtype}, {tuple(t.shape)}) does not match "
                                f"the planned {name} ({dtype}, {tuple(shape)})")
            f.write(_tensor_bytes(t))
            count += 1
        if count != len(order):
            raise UserError(f"{path}: got {count} tensors, planned {len(order)}")

"""The streaming writer lays out files exactly like ``safetensors.torch.save_file``."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from library.errors import UserError
from library.io.safetensors_stream import canonical_order, write_streaming


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"b.weight": torch.randn(3, 4, generator=g).half(), "a.weight": torch.randn(5, generator=g),
            "z.bias": torch.randn(2, 2, generator=g).bfloat16(), "ids": torch.arange(6).reshape(2, 3),
            "scalar": torch.tensor(1.5), "mask": torch.tensor([True, False, True]),
            "m.i32": torch.arange(3, dtype=torch.int32), "d": torch.randn(2, generator=g, dtype=torch.float64)}


@pytest.mark.parametrize("metadata", [None, {}, {"modelspec.title": "x\"é"}])
def test_streamed_file_is_byte_identical_to_save_file(tmp_path, metadata):
    t = _tensors()
    save_file(t, tmp_path / "ref.safetensors", metadata=metadata)
    plan = [(k, v.dtype, tuple(v.shape)) for k, v in t.items()]
    write_streaming(tmp_path / "s.safetensors", plan, t.__getitem__, metadata)
    assert (tmp_path / "s.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_many_metadata_keys_same_header_and_data(tmp_path):
    # safetensors 0.8 writes metadata keys in hash-map order; everything else is identical.
    t, meta = _tensors(), {f"k{i}": str(i) for i in range(9)}
    save_file(t, tmp_path / "ref.safetensors", metadata=meta)
    order = canonical_order([(k, v.dtype, tuple(v.shape)) for k, v in t.items()])
    write_streaming(tmp_path / "s.safetensors", order, ((n, t[n]) for n, _, _ in order), meta)
    a, b = (tmp_path / "ref.safetensors").read_bytes(), (tmp_path / "s.safetensors").read_bytes()
    (na,), (nb,) = struct.unpack("<Q", a[:8]), struct.unpack("<Q", b[:8])
    assert na == nb and a[8 + na:] == b[8 + nb:]
    assert json.loads(a[8:8 + na]) == json.loads(b[8:8 + nb])
    loaded = load_file(tmp_path / "s.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in t.items())


def test_plan_mismatch_leaves_no_file(tmp_path):
    t = _tensors()
    plan = [(k, v.dtype, tuple(v.shape)) for k, v in t.items()]
    with pytest.raises(UserError, match="does not match the planned"):
        write_streaming(tmp_path / "bad.safetensors", plan, lambda k: t[k].float() if k == "ids" else t[k])
    assert list(tmp_path.iterdir()) == []

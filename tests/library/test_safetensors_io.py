"""safetensors_io: header checks, atomic writes, kohya hashes."""

from __future__ import annotations

import hashlib
import struct

import pytest
import torch
from safetensors.torch import save as st_save, save_file

from library.errors import UserError
from library.io.safetensors_io import (
    atomic_path,
    data_section_sha256,
    file_model_hashes,
    lora_hashes,
    read_header,
    save_lora_file,
)


def _tensors(n=3, size=1000):
    g = torch.Generator().manual_seed(1)
    return {f"lora_unet_x{i}.lora_down.weight": torch.randn(size, generator=g) for i in range(n)}


def test_hashes_follow_kohya_definition():
    tensors = _tensors(n=400, size=1000)  # 1.6 MB so the legacy window is not empty
    meta = {"ss_network_dim": "4", "modelspec.title": "x"}
    model_hash, legacy = lora_hashes(tensors, meta)
    blob = st_save(tensors, metadata={"ss_network_dim": "4"})
    (n,) = struct.unpack("<Q", blob[:8])
    assert model_hash == hashlib.sha256(blob[8 + n:]).hexdigest()
    assert legacy == hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    assert len(model_hash) == 64 and len(legacy) == 8


def test_small_file_legacy_hash_is_empty_range():
    _, legacy = lora_hashes(_tensors(), {})
    assert legacy == "e3b0c442"


def test_save_lora_file_writes_hashes_matching_data_section(tmp_path):
    path = tmp_path / "a.safetensors"
    save_lora_file(_tensors(), path, {"ss_output_name": "a"})
    _, meta = read_header(path)
    assert meta["sshs_model_hash"] == data_section_sha256(path)
    assert meta["ss_output_name"] == "a"
    assert not list(tmp_path.glob(".*tmp*"))


def test_truncated_file_is_one_clear_error(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file(_tensors(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="t.safetensors: truncated"):
        read_header(path)


def test_garbage_file_is_one_clear_error(tmp_path):
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"PK\x03\x04 not safetensors at all")
    with pytest.raises(UserError, match="g.safetensors"):
        read_header(path)


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    final = tmp_path / "out.safetensors"
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            assert tmp.suffix == ".safetensors" and tmp.parent == tmp_path
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert final.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]


def test_atomic_path_keeps_the_finished_file_when_the_target_is_blocked(tmp_path):
    import os

    final = tmp_path / "out.safetensors"
    final.mkdir()  # a folder where the file should go: the rename must fail
    kept = tmp_path / f"out.unsaved-{os.getpid()}.safetensors"
    with pytest.raises(UserError) as info:
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"trained")
    assert str(info.value) == f"{final}: cannot write it (Is a directory); the new file was kept as {kept}"
    assert kept.read_bytes() == b"trained" and final.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors", kept.name]


def test_atomic_path_names_a_folder_it_cannot_create(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"file/sub: cannot create this folder \(Not a directory\); choose a writable"):
        with atomic_path(tmp_path / "file" / "sub" / "out.safetensors"):
            pass


def test_file_model_hashes(tmp_path):
    path = tmp_path / "m.bin"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    old, new = file_model_hashes(path)
    assert new == hashlib.sha256(data).hexdigest()
    assert old == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def test_written_files_get_the_normal_umask_mode(tmp_path):
    import os

    path = tmp_path / "m.safetensors"
    save_lora_file(_tensors(), path, {})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_read_tensors_equals_the_mapped_load(tmp_path):
    from library.io.safetensors_io import load_file, read_tensors

    path = tmp_path / "r.safetensors"
    tensors = {"a": torch.randn(3, 4).half(), "b": torch.arange(5), "c": torch.randn(2).bfloat16(),
               "e": torch.zeros(0), "big": torch.randn(600, 512)}  # 1.2 MB
    save_file(tensors, str(path))
    read = dict(read_tensors(path))
    mapped, _ = load_file(path)
    assert read.keys() == mapped.keys()
    for k in read:
        assert read[k].dtype == mapped[k].dtype and torch.equal(read[k], mapped[k])

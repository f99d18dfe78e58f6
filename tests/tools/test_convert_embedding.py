"""Embedding layouts (library/embeddings/files.py) and ``convert_embedding``: every layout round-trips bit for bit,
``.pt`` files load with ``weights_only=True`` only, and the keys are the ones A1111, ComfyUI and diffusers read."""

from __future__ import annotations

import pytest
import torch

from library.embeddings.files import Embedding, bundle_keys, read_embedding, write_embedding
from library.errors import UserError
from library.io.safetensors_io import load_file
from tools import convert_embedding

GEN = torch.Generator().manual_seed(0)
SD = (torch.randn(3, 768, generator=GEN),)
SD2 = (torch.randn(2, 1024, generator=GEN),)
SDXL = (torch.randn(2, 768, generator=GEN), torch.randn(2, 1280, generator=GEN))


def _native(tmp_path, vectors, name="mytok") -> str:
    return str(write_embedding(Embedding(vectors), tmp_path / f"{name}.safetensors", "kohya",
                               metadata={"ss_token_abstraction": '{"TOK": ["<s0>", "<s1>"]}'})[0])


def test_native_files_have_the_ui_keys_and_shapes(tmp_path):
    sd, meta = load_file(_native(tmp_path, SD, "sd"))
    assert {k: tuple(v.shape) for k, v in sd.items()} == {"emb_params": (3, 768)}  # A1111: exactly one key
    assert meta["ss_token_abstraction"] == '{"TOK": ["<s0>", "<s1>"]}'
    xl, _ = load_file(_native(tmp_path, SDXL, "xl"))
    assert {k: tuple(v.shape) for k, v in xl.items()} == {"clip_l": (2, 768), "clip_g": (2, 1280)}
    assert {k: tuple(v.shape) for k, v in load_file(_native(tmp_path, SD2, "sd2"))[0].items()} == {
        "emb_params": (2, 1024)}


LAYOUT_FILES = [("kohya", ".pt"), ("kohya", ".safetensors"), ("a1111", ".pt"), ("diffusers", ".safetensors"),
                ("diffusers", ".bin")]
CASES = [(name, vectors, layout, suffix) for name, vectors in (("sd1", SD), ("sd2", SD2), ("sdxl", SDXL))
         for layout, suffix in LAYOUT_FILES if not (layout == "a1111" and len(vectors) == 2)]  # refused: see below


@pytest.mark.parametrize("name, vectors, layout, suffix", CASES, ids=[f"{c[0]}-{c[2]}{c[3]}" for c in CASES])
def test_every_layout_round_trips_through_convert_embedding(tmp_path, name, vectors, layout, suffix):
    src = _native(tmp_path, vectors)
    mid = tmp_path / f"converted{suffix}"
    assert convert_embedding.main([src, str(mid), "--to", layout, "--token", "<mytok>"]) == 0
    back = tmp_path / "back.safetensors"
    assert convert_embedding.main([str(mid), str(back)]) == 0
    again, _ = load_file(back)
    original, _ = load_file(src)
    assert again.keys() == original.keys() and all(torch.equal(again[k], original[k]) for k in original)
    if layout == "diffusers":
        first = torch.load(mid, weights_only=True) if suffix == ".bin" else load_file(mid)[0]
        assert list(first) == ["<mytok>"]  # diffusers' load_textual_inversion: {token: vectors}
        assert (tmp_path / f"converted_2{suffix}").is_file() == (len(vectors) == 2)


def test_a1111_pt_layout_and_weights_only_loading(tmp_path):
    path = tmp_path / "a1111.pt"
    rows = torch.nn.Parameter(SD[0].clone())  # A1111 saves its trained vector, a parameter
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": rows}, "name": "mychar", "step": 1200,
                "sd_checkpoint": "abc", "sd_checkpoint_name": "model"}, path)
    emb = read_embedding(path)
    assert emb.name == "mychar" and torch.equal(emb.vectors[0], SD[0])
    out = tmp_path / "out.pt"
    assert convert_embedding.main([_native(tmp_path, SD), str(out), "--to", "a1111", "--token", "mychar"]) == 0
    data = torch.load(out, weights_only=True)
    assert data["name"] == "mychar" and data["string_to_token"] == {"*": 265}
    assert torch.equal(data["string_to_param"]["*"], SD[0])


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "old.pt"
    torch.save({"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(SD[0])})}, path)
    assert convert_embedding.main([str(path), str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights_only=True" in err[0] and str(path) in err[0]


def test_bundled_embeddings_read_from_a_lora(tmp_path):
    from safetensors.torch import save_file

    tensors = {"lora_unet_x.alpha": torch.tensor(1.0), **bundle_keys("TOK", SDXL), **bundle_keys("OTHER", SDXL)}
    assert sorted(bundle_keys("TOK", SD)) == ["bundle_emb.TOK.string_to_param.*"]
    assert sorted(bundle_keys("TOK", SDXL)) == ["bundle_emb.TOK.clip_g", "bundle_emb.TOK.clip_l"]
    save_file(tensors, str(tmp_path / "lora.safetensors"))
    out = tmp_path / "tok.safetensors"
    assert convert_embedding.main([str(tmp_path / "lora.safetensors"), str(out), "--name", "TOK"]) == 0
    assert torch.equal(load_file(out)[0]["clip_g"], SDXL[1])
    with pytest.raises(UserError, match="bundles OTHER, TOK"):
        read_embedding(tmp_path / "lora.safetensors", "MISSING")
    with pytest.raises(UserError, match="cannot be bundled"):
        bundle_keys("a.b", SD)


@pytest.mark.parametrize("argv_tail, message", [
    (["--to", "a1111"], "A1111's .pt layout holds one text encoder"),
    ([], "already exists"),
])
def test_conversion_errors_are_one_line(tmp_path, capsys, argv_tail, message):
    src = _native(tmp_path, SDXL)
    out = tmp_path / ("out.pt" if argv_tail else "mytok.safetensors")
    if not argv_tail:
        out = tmp_path / "taken.safetensors"
        out.write_bytes(b"")
    assert convert_embedding.main([src, str(out), *argv_tail]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_not_an_embedding(tmp_path, capsys):
    path = tmp_path / "two.safetensors"
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2), "b": torch.zeros(2)}, str(path))
    assert convert_embedding.main([str(path), str(tmp_path / "o.safetensors")]) == 2
    assert "not an embedding file" in capsys.readouterr().err

"""Import-layering rules and file-size caps of ARCHITECTURE.md §2 and §5."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (glob, hard cap in lines). The first matching pattern wins.
SIZE_CAPS = [
    ("train_network.py", 40),
    ("sdxl_train_network.py", 40),
    ("sd_train/train_network.py", 40),
    ("sd_train/sdxl_train_network.py", 40),
    ("train_textual_inversion.py", 40),
    ("sdxl_train_textual_inversion.py", 40),
    ("sd_train/train_textual_inversion.py", 40),
    ("sd_train/sdxl_train_textual_inversion.py", 40),
    ("sd_train/trainer.py", 400),
    ("sd_train/families/*.py", 250),
    ("sd_train/options/*.py", 400),
    ("sd_train/network_host.py", 250),
    ("sd_train/cli.py", 250),
    ("networks/lora.py", 600),
    ("library/models/sdxl_unet.py", 900),  # the one allowed large file: a model definition
    ("library/dataset/*.py", 350),
    ("tools/*.py", 250),
    ("tests/**/*.py", 400),
    ("**/*.py", 300),
]

# package -> packages it must not import
FORBIDDEN = {
    "library": {"sd_train", "networks", "tools"},
    "networks": {"sd_train", "tools"},
    "tools": {"sd_train"},
    "sd_train": {"networks", "tools"},
}


def _py_files():
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in {".venv", "build", "output"} or "site-packages" in rel.parts:
            continue
        yield rel


def _cap(rel: Path) -> int:
    for pattern, cap in SIZE_CAPS:
        if rel.match(pattern) or str(rel) == pattern:
            return cap
    return 300


def test_file_sizes_within_caps():
    over = []
    for rel in _py_files():
        n = len((ROOT / rel).read_text(encoding="utf-8").splitlines())
        if n > _cap(rel):
            over.append(f"{rel}: {n} > {_cap(rel)}")
    assert not over, "files over their size cap:\n" + "\n".join(over)


def _imported_top_packages(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_layering_rules():
    bad = []
    for rel in _py_files():
        top = rel.parts[0]
        if top not in FORBIDDEN:
            continue
        tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"))
        hit = _imported_top_packages(tree) & FORBIDDEN[top]
        if hit:
            bad.append(f"{rel} imports {sorted(hit)}")
    assert not bad, "\n".join(bad)


def test_no_logging_setup_at_import_time():
    bad = []
    for rel in _py_files():
        if rel.parts[0] == "tests":
            continue
        tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                src = ast.unparse(node.value)
                if "setup_logging" in src or "basicConfig" in src:
                    bad.append(f"{rel}:{node.lineno}: {src}")
    assert not bad, "\n".join(bad)


def test_open_clip_is_never_imported():
    bad = []
    for rel in _py_files():
        tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"))
        if "open_clip" in _imported_top_packages(tree):
            bad.append(str(rel))
    assert not bad, f"open_clip must only be located with find_spec, never imported: {bad}"

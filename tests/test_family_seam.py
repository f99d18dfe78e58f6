"""The family seam (docs/ARCHITECTURE.md §3): only ``sd_train/families/`` and ``library/models/`` know how
SD1, SD2 and SDXL differ.

Everywhere else (tests excepted) a family or entry name (``sd``, ``sd1``, ``sd15``, ``sd2``, ``sdxl``) may
appear only in a docstring or as a call argument, which *selects* a family (``load_models(p,
expected_family="sdxl")``, ``entry_point("sdxl", argv)``). Comparing a name, keying a table by it,
choosing one with ``if``/``else``, looking one up or testing a prefix with it are family differences
and belong on the family object. The family constants (``SD1``, ``SD2``, ``SDXL``) and classes
(``SdFamily``, ``SdxlFamily``) are not named outside the seam either.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEAM = ("sd_train/families/", "library/models/")
FAMILY_NAMES = frozenset({"sd", "sd1", "sd15", "sd2", "sdxl"})
FAMILY_OBJECTS = frozenset({"SD1", "SD2", "SDXL", "SdFamily", "SdxlFamily"})
LOOKUP_METHODS = frozenset({"startswith", "endswith", "get", "pop", "setdefault", "index", "find", "count"})
# "path: source line" entries that may break the rule, each with a reason. Keep it empty.
ALLOWED: dict[str, str] = {}


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _selections(tree: ast.AST) -> set[int]:
    """Constants passed straight to a call (not to a lookup/prefix method): they select a family."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) and node.func.attr in LOOKUP_METHODS:
                continue
            out.update(id(a) for a in [*node.args, *(k.value for k in node.keywords)])
    return out


def family_violations(source: str, where: str) -> list[str]:
    """``where:line: source`` for each family-name use outside a docstring or a selecting call argument."""
    tree = ast.parse(source)
    lines = source.splitlines()
    ok = _docstrings(tree) | _selections(tree)
    bad = []
    for node in sorted(ast.walk(tree), key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0))):
        hit = (isinstance(node, ast.Constant) and node.value in FAMILY_NAMES and id(node) not in ok
               or isinstance(node, ast.Name) and node.id in FAMILY_OBJECTS
               or isinstance(node, ast.Attribute) and node.attr in FAMILY_OBJECTS
               or isinstance(node, ast.alias) and node.name in FAMILY_OBJECTS)
        if hit:
            line = lines[node.lineno - 1].strip()
            if f"{where}: {line}" not in ALLOWED:
                bad.append(f"{where}:{node.lineno}: {line}")
    return bad


def _checked_files():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.split("/")[0] in {".venv", "build", "output", "tests"} or "site-packages" in rel:
            continue
        if not rel.startswith(SEAM):
            yield rel, path


def test_no_family_differences_outside_the_seam():
    bad = [v for rel, path in _checked_files() for v in family_violations(path.read_text(encoding="utf-8"), rel)]
    assert not bad, ("family names used outside sd_train/families and library/models; add a property or method "
                     "to the family object instead:\n" + "\n".join(bad))


def test_allow_list_entries_still_exist():
    sources = {rel: path.read_text(encoding="utf-8") for rel, path in _checked_files()}
    stale = [e for e in ALLOWED if e.partition(": ")[2] not in sources.get(e.partition(": ")[0], "")]
    assert not stale, f"allow-list entries that no longer match a line: {stale}"


def test_checker_flags_each_kind_of_family_difference():
    src = '''"""Docstrings may say "sdxl"."""
from library.models.families import SDXL
load_models(path, expected_family="sdxl")
if family == "sdxl":
    pass
STEP = {"sd1": 64, "sdxl": 32}
tag = "sdxl" if is_xl else "sd"
scale = SCALES["sd2"]
xl = name.startswith("sdxl")
spec = SDXL
'''
    got = [v.partition(": ")[2] for v in family_violations(src, "x.py")]
    assert got == ['from library.models.families import SDXL', 'if family == "sdxl":',
                   'STEP = {"sd1": 64, "sdxl": 32}', 'STEP = {"sd1": 64, "sdxl": 32}',
                   'tag = "sdxl" if is_xl else "sd"', 'tag = "sdxl" if is_xl else "sd"',
                   'scale = SCALES["sd2"]', 'xl = name.startswith("sdxl")', 'spec = SDXL']

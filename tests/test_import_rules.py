"""Import hygiene (docs/ARCHITECTURE.md §2): no import cycles, and each package imports only what its
``__init__`` docstring allows.

Every ``import`` statement counts, also one inside a function: a lazy import only postpones a cycle,
the two modules still depend on each other. An edge goes to the module named (``from a.b import c``
goes to ``a.b.c`` when that is a module, else to ``a.b``); importing ``a.b.c`` does not count as
importing the package ``a.b`` that Python initializes on the way.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("library", "sd_train", "networks", "tools")
_CLAUSE = re.compile(r"May import:(.*?)(?:\n\s*\n|$)", re.S)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """``{dotted module name: path}`` of every module of the project packages (a package is its ``__init__``)."""
    out = {}
    for top in PACKAGES:
        for path in (root / top).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")[: len(module.split(".")) - node.level + is_package]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``module`` imports anywhere in its file (module level or inside functions)."""
    named: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            named += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path.name == "__init__.py", node)
            named += [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    out = set()
    for name in named:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``{module: project modules it imports}``."""
    modules = project_modules(root)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def allowed_imports(init: Path) -> list[str] | None:
    """The ``May import:`` clause of a package docstring as module prefixes (``None`` when it has none)."""
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
    m = _CLAUSE.search(doc)
    return None if m is None else re.findall(r"``([\w.]+)``", m.group(1))


def rule_violations(root: Path = ROOT) -> list[str]:
    """``module imports X`` for each import outside the module's package and its package's clause."""
    rules = {}
    for pkg, path in project_modules(root).items():
        if path.name == "__init__.py" and (allowed := allowed_imports(path)) is not None:
            rules[pkg] = allowed
    bad = []
    for module, deps in import_graph(root).items():
        owner = max((p for p in rules if module == p or module.startswith(p + ".")), key=len, default=None)
        if owner is None:
            continue
        for dep in sorted(deps):
            ok = [owner, *rules[owner]]
            if not any(dep == a or dep.startswith(a + ".") for a in ok):
                bad.append(f"{module} imports {dep} (allowed: {', '.join(rules[owner]) or 'nothing outside'})")
    return bad


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_sees_lazy_imports(tmp_path):
    """A cycle closed by a function-level import is found (and a one-way pair is not)."""
    pkg = tmp_path / "library"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from library import b\n")
    (pkg / "b.py").write_text("def f():\n    from library.a import g\n")
    (pkg / "c.py").write_text("import library.b\n")
    assert find_cycles(import_graph(tmp_path)) == [["library.a", "library.b"]]


def test_every_library_package_states_its_imports():
    missing = [str(p.relative_to(ROOT)) for p in (ROOT / "library").rglob("__init__.py")
               if allowed_imports(p) is None]
    assert not missing, f"package docstrings without a 'May import:' clause: {missing}"


def test_packages_import_only_what_their_docstring_allows():
    bad = rule_violations()
    assert not bad, "\n".join(bad)


def test_rule_checker_flags_an_undeclared_import(tmp_path):
    lib = tmp_path / "library"
    for sub in ("io", "text"):
        (lib / sub).mkdir(parents=True)
    (lib / "__init__.py").write_text('"""Top.\n\nMay import: nothing outside the package."""\n')
    (lib / "io" / "__init__.py").write_text('"""Files.\n\nMay import: ``library.errors``."""\n')
    (lib / "text" / "__init__.py").write_text('"""Text.\n\nMay import: ``library.io``."""\n')
    (lib / "errors.py").write_text("")
    (lib / "io" / "files.py").write_text("from library.errors import E\nfrom library.text import t\n")
    (lib / "text" / "t.py").write_text("from library.io import files\n")
    assert rule_violations(tmp_path) == ["library.io.files imports library.text.t (allowed: library.errors)"]

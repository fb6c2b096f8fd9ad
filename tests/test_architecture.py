"""The house rules of docs/architecture.md, read from the code itself (the AST; nothing is imported).

- One direction of imports: faq <- index <- bot <- admin (faq imports none of the others).
- Inside admin, each room imports only the rooms its docstring allows (admin/__init__.py).
- No private name (`_x`) is imported from another module.
- No function over 80 lines, no module over 700 (bot/migrations/versions are generated).
- Every exception class of the project derives from the one root, faq.errors.FaqbotError.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("faq", "index", "bot", "admin")
# admin room -> the admin rooms it may import (every room may import faq, index, bot and admin.errors)
ROOMS: dict[str, set[str]] = {
    "cli": {"cli", "web", "curation", "quality", "finetune", "loadtest"},
    "web": {"web", "curation"},
    "curation": {"curation"},
    "quality": {"quality"},
    "finetune": {"finetune", "quality"},
    "loadtest": {"loadtest"},
}
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 700


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")
                  if "migrations/versions" not in p.as_posix())


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import of faqbot's own packages in `path` (relative imports resolved)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = path.relative_to(ROOT).with_suffix("").parts[: -node.level]
                module = ".".join([*parts, module] if module else parts)
            found.append((module, [alias.name for alias in node.names]))
    return [(m, names) for m, names in found if m.split(".")[0] in PACKAGES]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_imports_follow_the_house_rules(path: Path) -> None:
    parts = path.relative_to(ROOT).parts
    rank = PACKAGES.index(parts[0])
    room = parts[1] if parts[0] == "admin" and len(parts) > 2 else None
    for module, names in _imports(path):
        target = module.split(".")
        assert PACKAGES.index(target[0]) <= rank, f"{module} is above {parts[0]}: imports go faq <- index <- bot <- admin"
        if room is not None and target[0] == "admin" and len(target) > 1 and target[1] in ROOMS:
            assert target[1] in ROOMS[room], f"admin/{room} may not import admin.{target[1]} (admin/__init__.py)"
        private = [n for n in names if n.startswith("_")] + [t for t in target[1:] if t.startswith("_")
                                                                   and t not in ("__init__", "__main__")]
        assert not private, f"private name(s) {private} imported from {module}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_module_or_function_is_too_long(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            assert length <= MAX_FUNCTION_LINES, f"{node.name} is {length} lines"


def test_every_exception_derives_from_the_one_root() -> None:
    """Read the class tree statically: each exception class names a base that leads to FaqbotError."""
    bases: dict[str, list[str]] = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases]

    def reaches_root(name: str, seen: frozenset[str] = frozenset()) -> bool:
        if name == "FaqbotError":
            return True
        return name not in seen and any(reaches_root(b, seen | {name}) for b in bases.get(name, []))

    exceptions = [name for name in bases if name.endswith("Error") and name != "FaqbotError"]
    assert len(exceptions) > 30
    assert [name for name in exceptions if not reaches_root(name)] == []

"""Routing and filters sit below the daemon and beside the outputs: they import neither, and filters import
no router or buffer (they are written against their own contract, filters/base.py). Every import counts,
also those inside functions and under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import forwardd

PACKAGE = Path(forwardd.__file__).parent

ABOVE = ("forwardd.app", "forwardd.cli", "forwardd.config", "forwardd.server", "forwardd.outputs")
FORBIDDEN = {
    "router": ABOVE,
    "filters": (*ABOVE, "forwardd.router", "forwardd.buffer"),
}


def imported(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every module ``path`` (under ``root``) imports, absolute (relative imports resolved)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("area", sorted(FORBIDDEN))
def test_no_import_reaches_up_or_across(area: str) -> None:
    modules = sorted((PACKAGE / area).glob("*.py"))
    assert modules
    wrong = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in modules
        for name in sorted(imported(path))
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[area])
    ]
    assert wrong == []


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    fake = tmp_path / "forwardd" / "filters" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f() -> None:\n    from ..router import Router\n    import forwardd.buffer.queue\n")
    names = imported(fake, tmp_path)
    assert "forwardd.router.Router" in names
    assert "forwardd.buffer.queue" in names

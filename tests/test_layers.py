"""The package's layers, as a test: no module imports from a layer above its own.

    L0  model, errors, constants, stats, config, logging, storage, lifecycle   (config knows no component)
    L1  protocol, pieces, sink                                       (the sans-IO core and the ack contract)
    L2  buffer, router, filters, outputs, server, ops                (components, each with its settings)
    L3  app                                                          (registry, Config, builder, Daemon)
    L4  cli, testing, __main__                                       (entry points; testing may use anything)

Within L2 some areas must not see each other either: filters are written against their own contract
(filters/base.py) and import no router, buffer, server or output; the router imports no server or output.
Every import counts: inside functions, relative ones, and those under ``TYPE_CHECKING`` (a type-only import
upwards still ties the lower layer to the higher one's names).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import forwardd

PACKAGE = Path(forwardd.__file__).parent

LAYERS: dict[str, int] = {
    "forwardd": 0,  # the package's own __init__: the version
    "model": 0,
    "errors": 0,
    "constants": 0,
    "stats": 0,
    "config": 0,
    "logging": 0,
    "storage": 0,
    "lifecycle": 0,
    "protocol": 1,
    "pieces": 1,
    "sink": 1,
    "buffer": 2,
    "router": 2,
    "filters": 2,
    "outputs": 2,
    "server": 2,
    "ops": 2,
    "app": 3,
    "cli": 4,
    "testing": 4,
    "__main__": 4,
}
#: Areas of the same layer an area must not import.
SIDEWAYS: dict[str, tuple[str, ...]] = {
    "filters": ("router", "buffer", "server", "outputs"),
    "router": ("server", "outputs"),
}


def area_of(module: str) -> str:
    """``forwardd.outputs.file.output`` -> ``outputs``; ``forwardd`` -> ``forwardd``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every forwardd module ``path`` (under ``root``) imports, absolute (relative imports resolved);
    ``from forwardd import app`` counts as ``forwardd.app``, ``from forwardd import __version__`` as
    ``forwardd``."""
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
            for alias in node.names:
                sub = root / "forwardd" / alias.name
                is_module = sub.is_dir() or sub.with_suffix(".py").is_file()
                names.add(f"{base}.{alias.name}" if base == "forwardd" and is_module else base)
    return {n for n in names if n == "forwardd" or n.startswith("forwardd.")}


def violations(root: Path) -> list[str]:
    """Every import in the tree under ``root``/forwardd that reaches up a layer or across a forbidden line."""
    wrong = []
    for path in sorted((root / "forwardd").rglob("*.py")):
        here = area_of(module_name(path, root))
        if here == "testing":
            continue
        for name in sorted(imported(path, root)):
            there = area_of(name)
            if there not in LAYERS:
                wrong.append(f"{path.relative_to(root)} imports {name}: no layer is declared for {there}")
            elif LAYERS[there] > LAYERS[here] or there in SIDEWAYS.get(here, ()):
                wrong.append(f"{path.relative_to(root)} (L{LAYERS[here]}) imports {name} (L{LAYERS[there]})")
    return wrong


def test_every_area_has_a_layer() -> None:
    areas = {area_of(module_name(p, PACKAGE.parent)) for p in PACKAGE.rglob("*.py")}
    assert areas - LAYERS.keys() == set()


def test_no_import_reaches_up_a_layer_or_across() -> None:
    assert violations(PACKAGE.parent) == []


@pytest.mark.parametrize(
    ("where", "code", "expected"),
    [
        ("config/x.py", "from forwardd.router.table import ROOT_LABEL\n", "forwardd.router.table"),
        (
            "config/x.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from forwardd import app\n",
            "forwardd.app",
        ),
        ("protocol/x.py", "def f() -> None:\n    from ..server import listener\n", "forwardd.server"),
        ("filters/x.py", "import forwardd.buffer.queue\n", "forwardd.buffer.queue"),
        ("outputs/x.py", "from forwardd.app.registry import OUTPUTS\n", "forwardd.app.registry"),
    ],
)
def test_the_check_fails_on_an_import_up_or_across(
    tmp_path: Path, where: str, code: str, expected: str
) -> None:
    fake = tmp_path / "forwardd" / where
    fake.parent.mkdir(parents=True)
    fake.write_text(code)
    (tmp_path / "forwardd" / "app").mkdir()
    (tmp_path / "forwardd" / "app" / "ok.py").write_text("from forwardd.config import load_config\n")
    (found,) = violations(tmp_path)
    assert f"forwardd/{where}" in found
    assert f"imports {expected}" in found

"""The protocol core is sans-I/O: it imports no event loop, no logging, no layer above it. An import of
asyncio (even through a helper) would let I/O creep into what is meant to be pure and testable byte in,
events out; a check that reads the imports keeps it so."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "forwardd" / "protocol"
FORBIDDEN = ("asyncio", "uvloop", "structlog", "logging", "socket", "ssl", "selectors", "threading")
ABOVE = ("forwardd.server", "forwardd.router", "forwardd.filters", "forwardd.buffer", "forwardd.outputs",
         "forwardd.config", "forwardd.app", "forwardd.cli", "forwardd.testing", "forwardd.sink")  # fmt: skip


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_module_of_the_protocol_core_imports_io_or_a_layer_above() -> None:
    found = {
        (path.name, name)
        for path in sorted(PROTOCOL.glob("*.py"))
        for name in imported(path)
        if name.split(".")[0] in FORBIDDEN or name.startswith(ABOVE)
    }
    assert found == set()


def test_importing_the_protocol_core_loads_no_event_loop() -> None:
    """The same, transitively: nothing it imports (msgpack, msgspec, zstandard) pulls asyncio in either."""
    code = (
        "import sys, forwardd.protocol, forwardd.protocol.jobs; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('asyncio', 'uvloop', 'structlog')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"

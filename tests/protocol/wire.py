"""Readers for the captured client traffic in tests/data/wire-samples (see its README.md).

Each capture becomes a list of :class:`Conn`: the client's bytes cut into messages, the reference
receiver's replies cut into messages, and the events the capture says came out. The golden tests feed
the client bytes to our protocol core and compare events and replies with these.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from tests.conftest import WIRE_SAMPLES

SAMPLES = WIRE_SAMPLES
if not SAMPLES.is_dir():
    # Fail loudly: parametrised tests over an empty folder would otherwise be skipped, not run.
    raise RuntimeError(f"wire samples not found at {SAMPLES}")
CLIENTS = SAMPLES / "clients"
FLUENTD = SAMPLES / "fluentd-1.18"
FLUENT_BIT = SAMPLES / "fluent-bit-4.2.8"

_NS = 1_000_000_000


@dataclass
class Expected:
    """One event the capture says the reference receiver decoded. ``time_ns`` is exact when the
    capture prints EventTime parts; ``time_s`` is the JSON float otherwise (rounded by the capture)."""

    tag: str | None
    record: dict[str, Any] | None
    time_ns: int | None = None
    time_s: float | None = None
    #: A JSON line the capture cut short (it truncates long lines): only its prefix can be compared.
    json_prefix: str | None = None


@dataclass
class Conn:
    name: str
    c2s: list[bytes] = field(default_factory=list)
    s2c: list[bytes] = field(default_factory=list)
    events: list[Expected] = field(default_factory=list)
    #: How many entries the capture says the connection carried (Fluent Bit prints only the first two).
    entry_count: int | None = None
    #: Exact EventTimes the capture's decoded listing shows, in order (client captures).
    event_times_ns: list[int] = field(default_factory=list)

    @property
    def client_bytes(self) -> bytes:
        return b"".join(self.c2s)


def read_xxd(path: Path) -> bytes:
    """Bytes of an ``xxd`` dump (``xxd -r``): the hex area is 39 characters after ``OFFSET: ``."""
    out = bytearray()
    for line in path.read_text().splitlines():
        if line.strip():
            out += bytes.fromhex(line[10:49].replace(" ", ""))
    return bytes(out)


def _split(data: bytes) -> list[bytes]:
    """Cut a stream into its top-level msgpack values (only used on replies and clean captures)."""
    u = msgpack.Unpacker(None, raw=True)
    u.feed(data)
    out: list[bytes] = []
    pos = 0
    for _ in u:
        end = u.tell()
        out.append(data[pos:end])
        pos = end
    return out


def as_json_line(tag: str, time_ns: int, record: dict[str, Any]) -> str:
    """An event in the captures' JSON-lines form (integer seconds stay integers)."""
    t: float = time_ns // _NS if time_ns % _NS == 0 else time_ns / _NS
    return json.dumps({"tag": tag, "time": t, "record": record})


def client_capture(name: str) -> Conn:
    """A ``clients/NAME`` capture: one connection, events as JSON lines at the end of NAME.txt."""
    conn = Conn(name)
    raw = read_xxd(CLIENTS / f"{name}.c2s.hex")
    text = (CLIENTS / f"{name}.txt").read_text()
    offsets = [
        int(m.group(1)) for m in re.finditer(r"^@(\d+) \(\d+ bytes\)", text.split("## server")[0], re.M)
    ]
    bounds = [*offsets, len(raw)]
    conn.c2s = [raw[a:b] for a, b in itertools.pairwise(bounds) if a < b] if offsets else [raw]
    s2c = CLIENTS / f"{name}.s2c.hex"
    if s2c.exists():
        conn.s2c = _split(read_xxd(s2c))
    conn.event_times_ns = [
        int(s) * _NS + int(n) for s, n in re.findall(r"EventTime (\d+)\.(\d{9})", text.split("## server")[0])
    ]
    events_text = text.split("## events as decoded", 1)[1] if "## events as decoded" in text else ""
    for line in events_text.splitlines():
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                conn.events.append(Expected(None, None, json_prefix=line))
                continue
            t = obj["time"]
            conn.events.append(
                Expected(obj["tag"], obj["record"], time_ns=t * _NS if isinstance(t, int) else None, time_s=t)
            )
    return conn


CLIENT_NAMES = sorted(p.name[: -len(".c2s.hex")] for p in CLIENTS.glob("*.c2s.hex"))

_ENTRY = re.compile(r"^\s+entry: \[(?:EventTime\((\d+), (\d+)\)|(\d+)), (\{.*\})\]$")


def fluentd_capture(variant: str) -> list[Conn]:
    """``fluentd-1.18/VARIANT.txt``: every TCP connection with ``hex:`` lines per message."""
    conns: list[Conn] = []
    conn: Conn | None = None
    direction = ""
    for line in (FLUENTD / f"{variant}.txt").read_text().splitlines():
        if line.startswith("== conn"):
            conn = Conn(f"{variant}:{line.split()[2]}")
            conns.append(conn)
        elif line.startswith("-- c2s"):
            direction = "c2s"
        elif line.startswith("-- s2c"):
            direction = "s2c"
        elif line.startswith("hex: ") and conn is not None:
            getattr(conn, direction).append(bytes.fromhex(line[5:]))
        elif (m := _ENTRY.match(line)) and conn is not None:
            ns = int(m.group(1)) * _NS + int(m.group(2)) if m.group(1) else int(m.group(3)) * _NS
            conn.events.append(Expected(None, ast.literal_eval(m.group(4)), time_ns=ns))
    return conns


FLUENTD_VARIANTS = sorted(p.stem for p in FLUENTD.glob("*.txt"))

_FB_ENTRY = re.compile(
    r"^\s+(?:\[\d+\] )?(?:\[\[time, metadata\], record\]: )?time="
    r"(?:EventTime\(ext 0, fixext8\) (\d+)\.(\d{9})|integer (\d+))(?: metadata=(\{.*?\}))? record=(\{.*\})$"
)


def fluent_bit_capture(stem: str) -> Conn:
    """``fluent-bit-4.2.8/STEM.hex`` (lines ``<time> C>S|S>C <len> <hex>``) plus what
    ``VARIANT.decoded.txt`` says about it (times exact, records, the entry count)."""
    conn = Conn(stem)
    for line in (FLUENT_BIT / f"{stem}.hex").read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[1] in ("C>S", "S>C"):
            data = bytes.fromhex(parts[3])
            assert len(data) == int(parts[2])
            (conn.c2s if parts[1] == "C>S" else conn.s2c).append(data)
    variant = stem.split("-n")[0]
    text = (FLUENT_BIT / f"{variant}.decoded.txt").read_text()
    section = text.split(f"== {stem}.hex\n", 1)[1].split("\n== ", 1)[0]
    count = 0
    for line in section.split("-- S>C")[0].splitlines():
        if m := re.match(r"^\s+(?:packed )?entries: (\d+) entries", line):
            count += int(m.group(1))
        elif m := _FB_ENTRY.match(line):
            ns = int(m.group(1)) * _NS + int(m.group(2)) if m.group(1) else int(m.group(3)) * _NS
            conn.events.append(Expected(None, ast.literal_eval(m.group(5)), time_ns=ns))
    conn.entry_count = count or len(conn.events)
    return conn


FLUENT_BIT_STEMS = sorted(p.stem for p in FLUENT_BIT.glob("*.hex"))

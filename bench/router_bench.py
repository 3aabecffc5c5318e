"""Micro-benchmark of the router's per-chunk cost: ``router.entry()(chunk)`` on a cached tag.

    python -m bench.router_bench [--number 200000] [--reps 3] [--json]
    python -m bench.router_bench --ab OLD_TREE NEW_TREE      # A/B: runs each tree in turn, medians

The router sits on the ack path of every chunk, so its per-chunk overhead is paid a million times a second
on PackedForward traffic. Three shapes, the ones its decisions are compiled to:

* ``single``: one route, no filter, one sink: the sink's ``submit`` behind a dict lookup and a counter;
* ``linear``: one route with one filter that passes the chunk on untouched (as docker_partial does with a
  chunk holding no piece, minus its byte search) into one sink: no lists unless the filter splits, holds
  or fails;
* ``general``: a fan-out to two sinks (the walk with its acceptance bookkeeping).

The sinks accept at once (return None), so only the router is measured. ``--ab`` runs this file under each
tree's ``PYTHONPATH`` in interleaved repetitions (the machine is shared and noisy) and prints the medians
side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import timeit

import msgpack

CASES = ("single", "linear", "general")


class _PassOn:
    """A filter that keeps every event: what is measured is the router's cost around a filter call."""

    name = "pass_on"

    def __call__(self, chunk: object) -> object:
        return chunk


class _Sink:
    """Accepts at once, as a memory sink with room does."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    def submit(self, chunk: object) -> None:
        self.count += 1

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def _measure(number: int) -> dict[str, float]:
    """ns per ``ingest(chunk)`` for each case (best of 5 timeit runs of ``number`` calls)."""
    from forwardd.model import Chunk
    from forwardd.router import Route, Router, compile_pattern

    entries = b"".join(msgpack.packb([1_700_000_000 + i, {"log": "x" * 80, "n": i}]) for i in range(10))
    chunk = Chunk("docker.web", entries, 10, 0)
    everything = compile_pattern("**")
    a, b = _Sink("a"), _Sink("b")
    routers = {
        "single": Router({"@ROOT": [Route(everything, (), ("a",))]}, {"a": a}),
        "linear": Router({"@ROOT": [Route(everything, (_PassOn(),), ("a",))]}, {"a": a}),
        "general": Router({"@ROOT": [Route(everything, (), ("a", "b"))]}, {"a": a, "b": b}),
    }
    out = {}
    for case, router in routers.items():
        ingest = router.entry()
        ingest(chunk)  # the decision for the tag is made and cached here
        best = min(timeit.repeat(lambda i=ingest: i(chunk), number=number, repeat=5))  # type: ignore[misc]
        out[case] = best / number * 1e9
    return out


def _ab(trees: list[str], number: int, reps: int) -> None:
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    for _ in range(reps):
        for tree in trees:  # interleaved: drift on a shared machine hits both alike
            env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
            got = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--number", str(number), "--json"],
                env=env,
                cwd=os.path.abspath(tree),
                capture_output=True,
                text=True,
                check=True,
            )
            runs[tree].append(json.loads(got.stdout))
    print(f"{'case':10}" + "".join(f"{t[-24:]:>26}" for t in trees) + "   ratio")
    for case in CASES:
        medians = [statistics.median(r[case] for r in runs[t]) for t in trees]
        cols = "".join(f"{m:>23.1f} ns" for m in medians)
        print(f"{case:10}{cols}   {medians[-1] / medians[0]:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--number", type=int, default=200_000, help="calls per timeit run")
    p.add_argument("--reps", type=int, default=3, help="repetitions per tree with --ab")
    p.add_argument("--json", action="store_true", help="print the ns per call as JSON")
    p.add_argument("--ab", nargs=2, metavar=("OLD_TREE", "NEW_TREE"), help="compare two source trees")
    args = p.parse_args()
    if args.ab:
        _ab(args.ab, args.number, args.reps)
        return
    result = _measure(args.number)
    if args.json:
        print(json.dumps(result))
    else:
        for case, ns in result.items():
            print(f"{case:10}{ns:8.1f} ns per chunk")


if __name__ == "__main__":
    main()

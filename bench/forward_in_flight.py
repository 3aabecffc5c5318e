"""The forward output with many tags: one write at a time against ``in_flight: N``, through the real
delivery loop, A/B between two source trees.

Docker's default tag is one per container, so an agent's batch holds one small chunk per tag, and the
delivery loop hands the forward output one of them at a time: each costs an acked round trip to the
aggregator. ``in_flight: N`` lets the loop write N at once. This measures that case: ``--tags`` tags,
each round one chunk of ``--events`` docker-shaped events per tag, submitted to the output's sink (a
memory buffer in front of the forward output, built from configuration as the daemon builds it) and
delivered before the next round starts (closed loop: every batch is one chunk per tag). Reported: writes
(chunks delivered) per second and events per second, medians of ``--reps`` interleaved repetitions.

Receivers as in bench.forward_output: forwardd acking into a null output (``forwardd``) and forwardd
acking once the chunk is fsync'd in its disk buffer (``forwardd-buffer``, a real aggregator's ack).

Variants run the sender from a source tree each, so that the code before a change is measured in the same
run as the code after it (``--trees base=/tmp/old,new=.``; a tree without ``in_flight`` runs with 1 only;
copy the C extensions into it)::

    git archive <commit> | tar -x -C /tmp/old && cp forwardd/outputs/_jsonl*.so /tmp/old/forwardd/outputs/ \\
        && cp forwardd/protocol/_entries*.so /tmp/old/forwardd/protocol/
    python -m bench.forward_in_flight --trees base=/tmp/old,new=. --in-flight 1,8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()

SENDER_CONFIG = """\
storage: {{path: {storage}}}
sources: [{{name: in, port: 0}}]
routes: [{{match: "**", outputs: [agg]}}]
outputs:
  agg:
    type: forward
    servers: [{{host: 127.0.0.1, port: {port}}}]
    heartbeat_type: none
    buffer: {{type: memory}}
{extra}"""


async def _send(
    port: int, in_flight: int, tags: int, events: int, rounds: int, storage: str
) -> dict[str, Any]:
    """The sender, run in a subprocess with the tree under test on PYTHONPATH: only forwardd imports."""
    import asyncio

    from forwardd.app import build_sink, parse_config
    from forwardd.model import Chunk, Event

    extra = f"    in_flight: {in_flight}\n" if in_flight > 1 else ""
    cfg = parse_config(SENDER_CONFIG.format(storage=storage, port=port, extra=extra))
    sink: Any = build_sink("agg", cfg.outputs["agg"], Path(storage))
    queue = sink.queue
    done = {"n": 0, "target": 0}
    reached = asyncio.Event()
    mark = queue.mark_delivered

    def marked(taken: Any) -> None:  # counts the chunks the delivery loop lets go (all delivered)
        mark(taken)
        done["n"] += 1
        if done["n"] >= done["target"]:
            reached.set()

    queue.mark_delivered = marked
    now = time.time_ns()

    def make(r: int, t: int) -> Chunk:
        evs = [
            Event(now + i, {"container_id": f"{t:064x}", "container_name": f"/web.{t}", "source": "stdout",
                            "log": f"round {r} line {i} " + "x" * 120})
            for i in range(events)
        ]  # fmt: skip
        return Chunk.from_events(f"docker.c{t}", evs, now)

    batches = [[make(r, t) for t in range(tags)] for r in range(rounds + 1)]
    await sink.start()
    try:
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = 0.0
        for r, batch in enumerate(batches):
            if r == 1:  # round 0 warms up (connections opened)
                t0 = time.perf_counter()
                cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            reached.clear()
            done["target"] += len(batch)
            for c in batch:
                waiter = sink.submit(c)
                if waiter is not None:
                    await waiter
            await asyncio.wait_for(reached.wait(), 120)
        seconds = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        stats = sink.output.stats
        return {
            "writes": rounds * tags,
            "events": rounds * tags * events,
            "seconds": seconds,
            "cpu": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
            "connects": stats.connects,
            "unacked": stats.unacked_events,
            "forwardd": str(Path(sys.modules["forwardd"].__file__ or "").parent),
        }
    finally:
        await sink.stop()


def _tree_cpu(pid: int) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / tick


def run_sender(
    tree: Path, port: int, in_flight: int, args: argparse.Namespace, receiver_pid: int
) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree.resolve())
    with tempfile.TemporaryDirectory(prefix="forwardd-inflight-") as scratch:
        cmd = [
            sys.executable, str(HERE), "--sender", "--port", str(port), "--in-flight", str(in_flight),
            "--tags", str(args.tags), "--events", str(args.events), "--rounds", str(args.rounds),
            "--storage", scratch,
        ]  # fmt: skip
        rcpu0 = _tree_cpu(receiver_pid)
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, cwd=scratch, timeout=900, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"sender failed ({tree}, in_flight {in_flight}): {proc.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        result["receiver_cpu"] = _tree_cpu(receiver_pid) - rcpu0
        if Path(result["forwardd"]) != tree.resolve() / "forwardd":
            raise RuntimeError(f"the sender ran {result['forwardd']}, not {tree}'s forwardd")
        return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sender", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--storage", default="", help=argparse.SUPPRESS)
    ap.add_argument("--trees", default="new=.", help="name=path,... source trees to run the sender from")
    ap.add_argument("--in-flight", default="1,8", help="values for trees that have the setting")
    ap.add_argument("--tags", type=int, default=50)
    ap.add_argument("--events", type=int, default=10, help="events per chunk")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--targets", default="forwardd,forwardd-buffer")
    args = ap.parse_args()
    if args.sender:
        import uvloop

        out = uvloop.run(
            _send(args.port, int(args.in_flight), args.tags, args.events, args.rounds, args.storage)
        )
        print(json.dumps(out))
        return

    sys.path.insert(0, str(HERE.parent.parent))
    from bench.ingest import DEFAULT_COMMANDS, FORWARDD_BUFFER_CONFIG, FORWARDD_CONFIG, Target

    configs = {"forwardd": FORWARDD_CONFIG, "forwardd-buffer": FORWARDD_BUFFER_CONFIG}
    trees = [(name, Path(path)) for name, path in (t.split("=", 1) for t in args.trees.split(","))]
    depths = [int(x) for x in args.in_flight.split(",")]
    variants: list[tuple[str, Path, int]] = []
    for name, tree in trees:
        has = "in_flight" in (tree / "forwardd" / "outputs" / "forward" / "settings.py").read_text()
        for d in depths if has else [1]:
            variants.append((f"{name} in_flight={d}", tree, d))
    logdir = Path(tempfile.mkdtemp(prefix="forwardd-inflight-bench-"))
    targets = [Target(n, DEFAULT_COMMANDS["forwardd"], configs[n], logdir) for n in args.targets.split(",")]
    print(
        f"load average before: {os.getloadavg()[0]:.2f}; {args.tags} tags x {args.events} events per chunk, "
        f"{args.rounds} rounds per run"
    )
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        for t in targets:
            t.start(30)
        for rep in range(args.reps):
            for t in targets:
                for label, tree, depth in variants:
                    r = run_sender(tree, t.port, depth, args, t.pid)
                    results.setdefault((t.name, label), []).append(r)
                    rate = r["writes"] / r["seconds"]
                    print(f"  rep {rep + 1} {t.name:16} {label:22} {rate:>9,.0f} writes/s", flush=True)
    finally:
        for t in targets:
            t.stop()
    print(f"load average after: {os.getloadavg()[0]:.2f}\n")
    print(
        "| receiver        | sender                 | writes/s | events/s | sender CPU | receiver CPU |",
        end="",
    )
    print(" vs first |")
    print(
        "|-----------------|------------------------|----------|----------|------------|--------------|",
        end="",
    )
    print("----------|")
    for t in targets:
        first = None
        for label, _, _ in variants:
            rs = results[(t.name, label)]
            wps = statistics.median(r["writes"] / r["seconds"] for r in rs)
            eps = statistics.median(r["events"] / r["seconds"] for r in rs)
            scpu = statistics.median(100 * r["cpu"] / r["seconds"] for r in rs)
            rcpu = statistics.median(100 * r["receiver_cpu"] / r["seconds"] for r in rs)
            first = first or wps
            print(
                f"| {t.name:15} | {label:22} | {wps:8,.0f} | {eps:8,.0f} | {scpu:9.0f}% | {rcpu:11.0f}% "
                f"| {wps / first:7.2f}x |"
            )


if __name__ == "__main__":
    main()

"""A stop while clients never pause: docker's driver with ``fluentd-request-ack`` sends its next request as
soon as the last one is acked, for as long as the container logs. Before, the stop read on until each
connection went quiet for 0.2 s, which such a client never does: the stop ran to its deadline, then aborted
the connections and cut acks already owed, and the client sent those events again (duplicates). Now a
session reads on for at most a second, stops reading, sends what it owes and closes.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from forwardd.testing import ForwardClient
from forwardd.testing.client import AckError
from tests.e2e.helpers import Proc

#: The stop's deadline in this test; the stop must end long before it.
DEADLINE = 8.0
CLIENTS = 4


def test_stop_with_clients_that_never_pause_ends_early_and_cuts_no_ack(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = Proc(
        {
            "shutdown_timeout": f"{DEADLINE}s",
            "storage": {"path": str(tmp_path / "data")},
            "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
            "routes": [{"match": "**", "outputs": ["files"]}],
            "outputs": {"files": {"type": "file", "path": str(out / "${tag}.log")}},
        },
        tmp_path,
    )
    proc.wait_ready()
    port = proc.port()
    acked: list[list[int]] = [[] for _ in range(CLIENTS)]
    sent: list[list[int]] = [[] for _ in range(CLIENTS)]
    started = threading.Barrier(CLIENTS + 1)
    flowing = [threading.Event() for _ in range(CLIENTS)]

    def client(k: int) -> None:
        with ForwardClient(port=port, timeout=DEADLINE + 10) as c:
            started.wait()
            n = 0
            while True:
                sent[k].append(n)
                try:
                    c.message(f"busy.{k}", {"n": n}, ack=True)
                except (OSError, AckError):  # the stop closed the connection: an unacked request
                    return
                acked[k].append(n)
                n += 1
                if n == 200:
                    flowing[k].set()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    started.wait()
    for ev in flowing:  # every client is in full flow
        assert ev.wait(30)
    t0 = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    code = proc.proc.wait(DEADLINE + 30)
    took = time.monotonic() - t0
    for t in threads:
        t.join(30)
    proc.wait(10)
    assert code == 0, "\n".join(proc.raw[-20:])
    assert took < DEADLINE / 2, f"the stop took {took:.2f}s of its {DEADLINE}s deadline"

    for k in range(CLIENTS):
        lines = (out / f"busy.{k}.log").read_text().splitlines()
        got = Counter(json.loads(line)["n"] for line in lines)
        assert not [n for n, c in got.items() if c > 1], "an event written twice"
        assert set(acked[k]) <= set(got), "an acked event is missing"
        # at most the one request in flight when the connection closed is there without its ack
        assert set(got) - set(acked[k]) <= {sent[k][-1]}

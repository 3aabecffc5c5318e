#!/usr/bin/env python3
"""The image's health check: exit 0 when forwardd answers at ``$FORWARDD_HEALTH``, 1 otherwise.

``FORWARDD_HEALTH`` is one of
  ``tcp://HOST:PORT``            a TCP connect to a forward source (the image's default, tcp://127.0.0.1:24224)
  ``unix:///PATH``               a connect to a forward source's Unix socket
  ``http://HOST:PORT/PATH``      a GET that must answer 200 (the operators' endpoint: ``/health``)
so that moving the check to the HTTP endpoint is one line (the ``ENV`` in the Dockerfile, or an
``environment:`` entry of the stack), and a Swarm stack can check the Unix socket its engines log to. A
connect proves the process is alive and its listener accepts, which is what ``/health`` means. Standard
library only: it runs with whatever python3 the base image has.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request
from urllib.parse import urlsplit

TIMEOUT = 2.0


def check(target: str) -> str | None:
    """None when healthy, else why not (printed: docker keeps it in ``docker inspect``)."""
    url = urlsplit(target)
    try:
        if url.scheme == "tcp":
            if not url.hostname or not url.port:
                return f"expected tcp://HOST:PORT, got {target!r}"
            socket.create_connection((url.hostname, url.port), TIMEOUT).close()
        elif url.scheme == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(TIMEOUT)
                s.connect(url.path)
        elif url.scheme in ("http", "https"):
            with urllib.request.urlopen(target, timeout=TIMEOUT) as resp:
                if resp.status != 200:
                    return f"{target}: HTTP {resp.status}"
        else:
            return f"FORWARDD_HEALTH: expected tcp://, unix:// or http://, got {target!r}"
    except (OSError, ValueError) as exc:
        return f"{target}: {exc}"
    return None


def main() -> int:
    problem = check(os.environ.get("FORWARDD_HEALTH", "tcp://127.0.0.1:24224"))
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The HTTP output's counters exported in the one flat shape every output's stats share."""

from __future__ import annotations

import pytest

from forwardd.errors import RetryableError

from .conftest import Recorder, Reply, make_chunk
from .test_http_output import records


async def test_as_dict_is_flat_with_totals_and_reasons(http_server: Recorder, make_output) -> None:
    out = make_output(http_server.url)
    http_server.script.append(Reply(503))
    http_server.script.append(Reply(429))
    for _ in range(2):
        with pytest.raises(RetryableError):
            await out.write(make_chunk("a", records(2)))
    await out.write(make_chunk("a", records(2)))
    body = http_server.requests[-1].raw
    assert out.stats.as_dict() == {
        "events": 2,
        "bytes": len(body),
        "requests": 3,
        "retries": 2,
        "rejected": 0,
        "retries.429": 1,
        "retries.503": 1,
    }

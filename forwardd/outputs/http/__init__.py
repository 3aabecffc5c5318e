"""The HTTP output: :mod:`.output` (the output), :mod:`.endpoint` (the URL per tag, allowed hosts),
:mod:`.bodies` (request bodies per format), :mod:`.batches` (a chunk cut into requests, each with its own
outcome), :mod:`.client` (the aiohttp session and what each response means), :mod:`.settings` (its
configuration entry).

aiohttp is an optional dependency (the ``http`` extra): the names below are imported when first used, so
that reading a configuration (which needs only :mod:`.settings`) works without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forwardd.outputs.formats import encode_msgpack_maps
    from forwardd.outputs.http.batches import split_batches
    from forwardd.outputs.http.client import HttpStats, parse_retry_after
    from forwardd.outputs.http.output import HttpOutput

__all__ = ["HttpOutput", "HttpStats", "encode_msgpack_maps", "parse_retry_after", "split_batches"]

_WHERE = {
    "HttpOutput": "forwardd.outputs.http.output",
    "HttpStats": "forwardd.outputs.http.client",
    "encode_msgpack_maps": "forwardd.outputs.formats",
    "parse_retry_after": "forwardd.outputs.http.client",
    "split_batches": "forwardd.outputs.http.batches",
}


def __getattr__(name: str) -> object:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

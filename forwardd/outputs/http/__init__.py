"""The HTTP output: :mod:`.output` (the output), :mod:`.endpoint` (the URL per tag, allowed hosts),
:mod:`.bodies` (request bodies per format), :mod:`.batches` (a chunk cut into requests, each with its own
outcome), :mod:`.client` (the aiohttp session and what each response means), :mod:`.settings` (the shape of
its configuration entry)."""

from forwardd.outputs.formats import encode_msgpack_maps
from forwardd.outputs.http.batches import split_batches
from forwardd.outputs.http.client import HttpStats, parse_retry_after
from forwardd.outputs.http.output import HttpOutput

__all__ = ["HttpOutput", "HttpStats", "encode_msgpack_maps", "parse_retry_after", "split_batches"]

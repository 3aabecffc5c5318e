"""Finishing a big request off the event loop: :func:`finish_payload`, pure and thread-safe.

The session runs it in a worker thread for each :class:`~forwardd.protocol.events.PayloadReceived` (zlib,
zstd and the entry scan release the GIL), then handles the events it returns as if the decoder had returned
them inline: they are the same events (a property test holds the two paths equal), cut into chunks of
bounded size.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from forwardd.protocol.decoder import Decoder
from forwardd.protocol.errors import ProtocolError
from forwardd.protocol.events import Event, PayloadReceived, ProtocolViolation
from forwardd.protocol.jsonmode import json_replies
from forwardd.protocol.payload import packed_events

__all__ = ["finish_payload"]


def finish_payload(job: PayloadReceived) -> list[Event]:
    """The events ``job`` stands for; a :class:`ProtocolViolation` last if it breaks the protocol."""
    limits = replace(job.limits, inline_request_size=sys.maxsize)  # everything is finished here
    if job.tag is not None:
        events = packed_events(
            job.tag, job.data, job.options, job.chunk_raw, job.size, job.received_ns, limits, inline=False
        )
    else:
        decoder = Decoder(limits)
        decoder.received_ns = job.received_ns
        try:
            events = decoder.read_frame(bytes(job.data))  # a whole frame comes as bytes: no copy
        except ProtocolError as exc:  # its head was checked: not expected, but a violation if it happens
            events = [ProtocolViolation(exc.reason, exc.detail, exc.reply)]
    if job.json:
        json_replies(events)
    return events

"""The one data model: events travel as chunks of one tag, kept as msgpack bytes until someone needs a field.

A :class:`Chunk` is what the forward protocol calls PackedForward entries: a concatenation of msgpack
``[time, record]`` arrays, all for one tag. Every carrier mode (Message, Forward, PackedForward,
CompressedPackedForward) is normalised into that form at the edge, so the router, the disk buffer and the
outputs see exactly one shape. The entries stay the bytes the client sent until a filter or an output asks
for :meth:`Chunk.events`; only then are records decoded, once, and the result cached.

Times in entries may have any shape a real client sends (integer seconds, EventTime as fixext8 or ext8,
float seconds, the v1.5 ``[time, {metadata}]`` wrapper, ``0`` or ``nil``); decoding turns each into
nanoseconds since the epoch. Entries that cannot be an event (not a 2-array, record not a map, time of no
known shape) are skipped and counted in :attr:`Chunk.invalid`, never fatal to the rest of the chunk.

The times forwardd accepts from a client run from the epoch to 9999-12-31T23:59:59.999999999Z
(:data:`MAX_TIME_NS`), whatever their shape: every output can write those (four-digit years in RFC 3339
text, Python's datetime, file paths), where a time past them was acked and then dead-lettered by the
output that could not format it. A time before 1970 (a negative integer or float) is refused as
before: no client means one, and EventTime, the protocol's own time, cannot hold it. A msgpack Timestamp
(ext -1) is no event time (Fluentd does not take it either). The edge (:func:`entry_problem`, and the C
scan held equal to it) leaves such entries out and counts them where the peer is known. Decoding itself
(:func:`decode_entries`) still reads integer seconds past the range: they can only come from a queue
written before the edge refused them, and an acked event must not vanish in an upgrade.

The package is split by role: :mod:`~forwardd.model.event` (Event, EventTime, time shapes and their range),
:mod:`~forwardd.model.entries` (the general decoder, the edge's reference judgement of an entry, the
encoder), :mod:`~forwardd.model.plain` (the msgspec fast path, as columns), :mod:`~forwardd.model.chunk`
(Chunk). Every name is imported from here.
"""

from forwardd.constants import EVENT_TIME_EXT
from forwardd.model.chunk import Chunk
from forwardd.model.entries import INVALID_REASONS, decode_entries, entry_problem, pack_entries
from forwardd.model.event import MAX_TIME_NS, Event, EventTime, msgpack_default, pack_event_time
from forwardd.model.plain import PlainEntries

__all__ = [
    "EVENT_TIME_EXT",
    "INVALID_REASONS",
    "MAX_TIME_NS",
    "Chunk",
    "Event",
    "EventTime",
    "PlainEntries",
    "decode_entries",
    "entry_problem",
    "msgpack_default",
    "pack_entries",
    "pack_event_time",
]

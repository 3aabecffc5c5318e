"""The Kafka output's per-message outcomes: one write's delivery reports turned into what the delivery loop
acts on, and the counters they move.

Every message has its own delivery report, so every event has its own outcome (the
:mod:`forwardd.outputs.base` contract, per chunk):

* returns: every event was acknowledged by the broker (with ``required_acks``).
* :class:`~forwardd.errors.RetryableError`: no message got through, at least one failed retryably (broker
  down, message timed out, leader moving, not enough replicas, local queue purged), or the producer failed
  fatally or its reports did not come (then what happened is unknown): the whole chunk is written again
  later, at-least-once.
* :class:`~forwardd.errors.PartialDelivery`: some messages were acknowledged and others failed retryably:
  ``unsent`` holds only the failed ones (and those never produced), ``rejected`` those refused for good,
  ``cause`` the RetryableError; the delivery loop re-sends only ``unsent``.
* :class:`~forwardd.errors.RecordsRejected` (a ``PermanentError``) with ``rejected: Chunk``: every other event
  was delivered, and ``rejected`` holds only the events that can never be: larger than ``max_message_size``
  (never sent), or refused by the broker for good (message too large, invalid topic name, record invalid,
  not authorised).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from confluent_kafka import KafkaError

from forwardd.errors import PartialDelivery, RecordsRejected, RetryableError
from forwardd.model import Chunk
from forwardd.outputs.base import StatValue
from forwardd.outputs.kafka.producer import is_permanent
from forwardd.pieces import ranges_of, select_events

__all__ = ["KafkaOutputStats", "Produced", "fail_retryable", "settle"]


@dataclass(slots=True)
class KafkaOutputStats:
    """Counters since start. Bytes are message values as sent (before compression)."""

    delivered_events: int = 0
    delivered_bytes: int = 0
    rejected_events: int = 0
    retryable_errors: int = 0
    permanent_errors: int = 0
    last_error: str | None = None

    def copy(self) -> KafkaOutputStats:
        return dataclasses.replace(self)

    def as_dict(self) -> dict[str, StatValue]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def fail_retryable(name: str, stats: KafkaOutputStats, why: str) -> NoReturn:
    """Count a write that got nothing through and raise its RetryableError."""
    stats.retryable_errors += 1
    stats.last_error = why
    raise RetryableError(f"kafka output {name!r}: {why}")


class Produced:
    """What handing one write's messages to librdkafka left to settle besides the reports: how many events
    were encoded, and those never produced, by why: too large, refused by librdkafka for good, or not sent
    because producing had to stop (``stop_reason``; ``cause`` when an encoding error stopped it)."""

    __slots__ = ("cause", "count", "local_rejects", "oversized", "sent_bytes", "stop_reason", "unsent")

    def __init__(self) -> None:
        self.count = 0
        self.oversized: list[int] = []
        self.local_rejects: list[tuple[int, str]] = []
        self.unsent: list[int] = []
        self.stop_reason = ""
        self.cause: Exception | None = None
        self.sent_bytes = 0


def settle(
    name: str,
    stats: KafkaOutputStats,
    max_message_size: int,
    chunk: Chunk,
    values: Callable[[], list[bytes]],
    failed: list[tuple[KafkaError, bytes | None]],
    produced: int,
    out: Produced,
) -> None:
    """Turn the reports of one write into the contract's outcome: each event is delivered, rejected for
    good, or unsent (failed retryably, or never produced because producing had to stop); see the module
    doc. ``values`` gives every event's value again, only when a failed message's event must be found."""
    n = out.count
    rejected = list(out.oversized) + [i for i, _ in out.local_rejects]
    unsent: list[int] = list(out.unsent)
    sent_bytes = out.sent_bytes
    reasons = [f"{len(out.oversized)} larger than {max_message_size} bytes"] if out.oversized else []
    reasons += [why for _, why in out.local_rejects[:1]]
    retry_reasons = [out.stop_reason] if out.stop_reason else []
    if failed:
        # Find the failed messages' events by value among those produced; equal values are equal
        # events, any one will do. Only a failure pays for this (the values are encoded again).
        every = values()
        skip = set(rejected)
        skip.update(unsent)
        by_value: dict[bytes, list[int]] = {}
        for i in range(min(n, len(every))):
            if i not in skip:
                by_value.setdefault(every[i], []).append(i)
        permanent = [(e, v) for e, v in failed if is_permanent(e)]
        retryable = [(e, v) for e, v in failed if not is_permanent(e)]
        for kind, into in ((permanent, rejected), (retryable, unsent)):
            for _, fv in kind:
                idx = by_value.get(fv or b"")
                if idx:
                    into.append(idx.pop())
                    sent_bytes -= len(fv or b"")
        if permanent:
            e = permanent[0][0]
            reasons.append(f"{len(permanent)} refused by the broker, e.g. {e.name()}: {e.str()}")
        if retryable:
            e = retryable[0][0]
            retry_reasons.append(
                f"{len(retryable)} of {produced} messages failed, e.g. {e.name()}: {e.str()}"
            )
    delivered = produced - len(failed)
    stats.delivered_events += delivered
    stats.delivered_bytes += sent_bytes
    rejection: RecordsRejected | None = None
    if rejected:
        rejected.sort()
        stats.rejected_events += len(rejected)
        stats.permanent_errors += 1
        why = "; ".join(reasons)
        stats.last_error = why
        rejection = RecordsRejected(
            f"kafka output {name!r}: {len(rejected)} of {n} events rejected ({why})",
            select_events(chunk, ranges_of(rejected), n),
        )
    if unsent:
        unsent.sort()
        cause: Exception
        if out.cause is not None and not retry_reasons:
            # Only an encoding error stopped it: the rest is handled as if writing it had raised that.
            cause = out.cause
            retry_reasons.append(f"cannot encode: {out.cause}")
            stats.last_error = str(out.cause)
        else:
            if not delivered and not rejected:
                fail_retryable(name, stats, "; ".join(retry_reasons))  # nothing got through: all again
            stats.retryable_errors += 1
            cause = RetryableError(f"kafka output {name!r}: {'; '.join(retry_reasons)}")
            stats.last_error = str(cause)
        raise PartialDelivery(
            f"kafka output {name!r}: {delivered} of {n} events delivered, {len(rejected)} "
            f"rejected, {len(unsent)} to send again ({'; '.join(retry_reasons)})",
            delivered=delivered,
            rejected=rejection.rejected if rejection is not None else None,
            rejection=rejection,
            unsent=select_events(chunk, ranges_of(unsent), n),
            cause=cause,
        )
    if rejection is not None:
        raise rejection

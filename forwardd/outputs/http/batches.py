"""A chunk too big for one HTTP request: cut into requests, each with its own outcome.

A chunk becomes as many requests as it takes to keep each body within ``max_events`` events and
``max_bytes`` bytes (before compression), events in order. (``batch.max_wait`` is applied by the buffer,
which gathers chunks before handing them over, not here.) An event whose body alone exceeds ``max_bytes``
can never be sent.

Each request's outcome is its own: a permanently refused request costs exactly its events (the next
requests are still sent, then :class:`~forwardd.errors.RecordsRejected` names the refused and oversized
events), and a retryable failure stops the write with a :class:`~forwardd.errors.PartialDelivery` whose
``unsent`` holds the events of that request and of the ones after it, so the delivery loop re-sends only
those: events the endpoint accepted with a 2xx are neither sent again nor dead-lettered. When nothing got
through at all, the RetryableError itself is raised and the whole chunk is written again.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Awaitable, Callable, Sequence

from forwardd.errors import PartialDelivery, PermanentError, RecordsRejected, RetryableError
from forwardd.model import Chunk
from forwardd.pieces import ranges_of, select_events

__all__ = ["send_in_requests", "split_batches"]


def split_batches(
    ends: Sequence[int], max_events: int, max_bytes: int, overhead: Callable[[int], int]
) -> tuple[list[tuple[int, int]], list[int]]:
    """Cut items into request batches: ``([(start, stop), ...], [oversized item indexes])``.

    ``ends[i]`` is the end offset of item i in the concatenated items; a batch of n items costs its items'
    bytes plus ``overhead(n)`` (the array header or brackets). Greedy and in order; each step is a bisect,
    so the cost is per batch, not per event. ``overhead`` must not decrease as n grows.
    """
    n = len(ends)
    batches: list[tuple[int, int]] = []
    oversized: list[int] = []
    i = 0
    while i < n:
        hi = min(n, i + max_events)
        base = ends[i - 1] if i else 0
        j = bisect_right(ends, base + max_bytes - overhead(hi - i), i, hi)
        if j == i:
            # Under the worst-case overhead nothing fits; the first item alone may still fit exactly.
            if ends[i] - base + overhead(1) <= max_bytes:
                j = i + 1
            else:
                oversized.append(i)
                i += 1
                continue
        batches.append((i, j))
        i = j
    return batches, oversized


async def send_in_requests(
    chunk: Chunk,
    n: int,
    items: bytes,
    ends: list[int],
    batches: list[tuple[int, int]],
    oversized: list[int],
    *,
    send: Callable[[bytes, int], Awaitable[None]],
    body: Callable[[memoryview, int], bytes],
    max_bytes: int,
) -> None:
    """Send each batch of ``items`` (``n`` events of ``chunk``, ending at ``ends``) as one request through
    ``send(body, count)``; raise what the module doc says when not every event got through."""
    view = memoryview(items)
    refused: list[tuple[int, int]] = []  # event ranges of requests refused for good
    first_refusal: PermanentError | None = None
    delivered = 0
    for b, (i, j) in enumerate(batches):
        start = ends[i - 1] if i else 0
        try:
            await send(body(view[start : ends[j - 1]], j - i), j - i)
        except PermanentError as exc:  # this request's events only; the next requests still go
            refused.append((i, j))
            first_refusal = first_refusal or exc
            continue
        except RetryableError as exc:
            if not delivered and not refused and not oversized:
                raise  # nothing got through: the whole chunk is written again
            rejection = _rejection(chunk, n, ends, refused, first_refusal, oversized, delivered, max_bytes)
            unsent = select_events(chunk, batches[b:], n)
            rejected = rejection.rejected if rejection is not None else None
            raise PartialDelivery(
                f"{delivered} of {n} events of tag {chunk.tag!r} delivered, "
                f"{rejected.count if rejected else 0} refused, {unsent.count} to send again: {exc}",
                delivered=delivered,
                rejected=rejected,
                rejection=rejection,
                unsent=unsent,
                cause=exc,
            ) from exc
        delivered += j - i
    rejection = _rejection(chunk, n, ends, refused, first_refusal, oversized, delivered, max_bytes)
    if rejection is not None:
        raise rejection


def _rejection(
    chunk: Chunk,
    n: int,
    ends: list[int],
    refused: list[tuple[int, int]],
    first_refusal: PermanentError | None,
    oversized: list[int],
    delivered: int,
    max_bytes: int,
) -> RecordsRejected | None:
    """The events of refused requests and oversized ones, in chunk order, with why."""
    if not refused and not oversized:
        return None
    rejected = select_events(chunk, sorted(refused + ranges_of(oversized)), n)
    why = []
    if oversized:
        sizes = ", ".join(str(ends[k] - (ends[k - 1] if k else 0)) for k in oversized[:5])
        why.append(f"{len(oversized)} event(s) exceed max_bytes {max_bytes} (sizes {sizes})")
    if first_refusal is not None:
        why.append(f"{len(refused)} request(s) refused, e.g. {first_refusal}")
    return RecordsRejected(
        f"{rejected.count} event(s) of tag {chunk.tag!r} rejected: {'; '.join(why)}; "
        f"{delivered} others were delivered",
        rejected,
    )

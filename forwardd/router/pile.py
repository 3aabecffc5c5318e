"""The pile: the chunks that come while a reload holds the routes, kept in order and routed after it.

A reload must switch stateful filters while no chunk reaches them (:meth:`Router.hold
<forwardd.router.router.Router.hold>`); the sessions go on handing chunks over meanwhile, and each waits for
its ack, so nothing is refused and no connection closed. Two bounds keep this from costing the loop or the
memory: the pile is routed afterwards in slices of the loop (:data:`REPLAY_SLICE`, :data:`REPLAY_IN_FLIGHT`),
and past :data:`MAX_PARKED_CHUNKS` or :data:`MAX_PARKED_BYTES` the router's :class:`~forwardd.sink.Gate`
shuts, so that sessions owing acks stop reading until the pile shrinks. Its own module because none of this
is on the path of a chunk outside a reload.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable

from forwardd.errors import ChunkRejected
from forwardd.model import Chunk
from forwardd.router.stats import RouterStats, log
from forwardd.sink import Gate, Ingest

__all__ = ["MAX_PARKED_BYTES", "MAX_PARKED_CHUNKS", "REPLAY_IN_FLIGHT", "REPLAY_SLICE", "Pile"]

#: The longest the routing of a reload's pile keeps the loop at once, in seconds (see Router.replace)...
REPLAY_SLICE = 0.005
#: ...and the most of its chunks waiting for their sinks at once: the buffers' group commits then settle a
#: few thousand chunks at a time, not the whole pile in one loop turn.
REPLAY_IN_FLIGHT = 2_000
#: Beyond these, kept during a reload, the router shuts its gate (sessions owing acks stop reading)...
MAX_PARKED_CHUNKS = 20_000
MAX_PARKED_BYTES = 64 * 1024 * 1024
#: ...and opens it again under this share of them (not at once: no flapping).
_REOPEN_AT = 0.5


class Pile:
    """The chunks kept from a reload's :meth:`hold` until, after its :meth:`replay`, all are routed by
    ``route(label, tag)`` (the new table's decision); see the module doc."""

    def __init__(
        self,
        route: Callable[[str, str], Ingest],
        stats: RouterStats,
        *,
        max_chunks: int = MAX_PARKED_CHUNKS,
        max_bytes: int = MAX_PARKED_BYTES,
    ) -> None:
        self._route = route
        self.stats = stats
        #: From a reload's hold until what came meanwhile is routed: the chunks kept, in the order they came;
        #: ``_holding`` between hold and replay, ``_replay`` routing the pile after.
        self._held: deque[tuple[str, Chunk, asyncio.Future[None]]] | None = None
        self._holding = False
        self._replay: asyncio.Task[None] | None = None
        self._decisions: dict[tuple[str, str], Ingest] = {}
        self._bytes = 0
        #: Replayed chunks not accepted yet, and the replay waiting for them to fall (REPLAY_IN_FLIGHT).
        self._in_flight = 0
        self._room: asyncio.Future[None] | None = None
        self._settling: set[asyncio.Future[None]] = set()
        #: Shut while the pile is over these bounds: the sessions owing acks stop reading (see Gate).
        self.gate = Gate()
        self.max_chunks = max_chunks
        self.max_bytes = max_bytes

    @property
    def active(self) -> bool:
        """From a hold until the pile is routed: every chunk that comes joins it (:meth:`park`)."""
        return self._held is not None

    @property
    def parked(self) -> int:
        """Chunks kept during a reload and not routed yet."""
        return len(self._held) if self._held is not None else 0

    def hold(self) -> None:
        """Keep every chunk that comes from now on; a replay still under way stops until the next
        :meth:`replay`."""
        if self._held is None:
            self._held = deque()
        self._holding = True

    def replay(self) -> None:
        """The new table is in place: route the pile by it, oldest first (see :meth:`_replay_held`)."""
        self._holding = False
        self._decisions.clear()
        if not self._held:
            self._held = None
        elif self._replay is None:
            self._replay = asyncio.get_running_loop().create_task(self._replay_held(), name="router-replay")

    async def replayed(self) -> None:
        """Wait until the chunks kept during a reload have all been routed (not necessarily accepted)."""
        while self._replay is not None:
            await asyncio.shield(self._replay)

    def park(self, label: str) -> Ingest:
        """The ingest of a (label, tag) while the pile is :attr:`active`: the chunk joins the pile, its ack
        waits for its routing."""
        held = self._held
        assert held is not None

        def park(chunk: Chunk) -> Awaitable[None]:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            held.append((label, chunk, fut))
            self._bytes += len(chunk.entries)
            if not self.gate.closed and (len(held) > self.max_chunks or self._bytes > self.max_bytes):
                self.gate.close()
                self.stats.parked_limit_reached += 1
                log().warning(
                    "router.parked_limit",
                    parked_chunks=len(held),
                    parked_bytes=self._bytes,
                    max_chunks=self.max_chunks,
                    max_bytes=self.max_bytes,
                    hint="a reload is holding the routes: connections owing acks stop reading for now",
                )
            return fut

        return park

    async def _replay_held(self) -> None:
        """Route the pile kept during a reload, oldest first, a slice per loop turn (see
        :meth:`Router.replace <forwardd.router.router.Router.replace>`); until it is empty, chunks that come
        are kept behind it. A new :meth:`hold` stops it (the next :meth:`replay` starts it again)."""
        held = self._held
        assert held is not None
        clock = time.monotonic
        try:
            while held and not self._holding:
                until = clock() + REPLAY_SLICE
                while held and not self._holding:
                    label, chunk, fut = held.popleft()
                    self._bytes -= len(chunk.entries)
                    self._resume(label, chunk, fut)
                    if clock() >= until or self._in_flight >= REPLAY_IN_FLIGHT:
                        break
                self._open_gate_if_room()
                if not held or self._holding:
                    break
                if self._in_flight >= REPLAY_IN_FLIGHT:
                    self._room = asyncio.get_running_loop().create_future()
                    await self._room
                else:
                    await asyncio.sleep(0)  # every connection gets its turn between two slices
        except asyncio.CancelledError:
            # The loop is going away: what is left is refused for now (no ack; the clients resend).
            while held:
                _label, _chunk, fut = held.popleft()
                if not fut.done():
                    fut.set_exception(ChunkRejected("stopped during a reload", permanent=False))
            self._bytes = 0
            raise
        finally:
            self._replay = None
            if not held and not self._holding:
                self._held = None
                self._decisions.clear()
                self.gate.open()

    def _open_gate_if_room(self) -> None:
        held = self._held
        if (
            self.gate.closed
            and (held is None or len(held) <= self.max_chunks * _REOPEN_AT)
            and self._bytes <= self.max_bytes * _REOPEN_AT
        ):
            self.gate.open()

    def _resume(self, label: str, chunk: Chunk, fut: asyncio.Future[None]) -> None:
        """A chunk kept during a reload, routed now; its future settles as its routing does."""
        try:
            key = (label, chunk.tag)
            handle = self._decisions.get(key)
            if handle is None:
                handle = self._route(label, chunk.tag)
                self._decisions[key] = handle
            result = handle(chunk)
        except BaseException as exc:
            fut.set_exception(exc)
            return
        if result is None:
            fut.set_result(None)
            return
        self._in_flight += 1
        if not isinstance(result, asyncio.Future):  # a coroutine (see the router's module doc)
            result = asyncio.ensure_future(result)
            self._settling.add(result)
            result.add_done_callback(self._settling.discard)
        result.add_done_callback(functools.partial(self._settle, fut))

    def _settle(self, fut: asyncio.Future[None], result: asyncio.Future[None]) -> None:
        """A replayed chunk's future follows the one its routing returned."""
        self._in_flight -= 1
        room = self._room
        if room is not None and self._in_flight <= REPLAY_IN_FLIGHT // 2:
            self._room = None
            if not room.done():
                room.set_result(None)
        if fut.done():
            return
        if result.cancelled():
            fut.set_exception(ChunkRejected("cancelled", permanent=False))
        elif (exc := result.exception()) is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(None)

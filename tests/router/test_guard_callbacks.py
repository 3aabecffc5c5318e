"""With an @ERROR label every sink's result is guarded (a permanent refusal goes to the error label). A
disk buffer's future is guarded by callbacks, not a coroutine in a task per chunk; its outcome must be the
coroutine's, whatever the sink and the error label answer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from forwardd.errors import ChunkRejected
from forwardd.model import Chunk
from forwardd.router import Router
from tests.router.test_router import route, sinks

from .fakes import RecordingSink, chunk, outcome_of

#: How the guarded sink's future ends.
SINK = ["ok", "temporary", "permanent", "bug", "cancelled"]
#: What the error label's sink does with a redirected chunk.
ERRORS = ["accept", "future-ok", "future-temporary", "future-permanent", "raise-permanent", "raise-temporary"]


def _end(fut: asyncio.Future[None], how: str) -> None:
    if how in ("ok", "future-ok"):
        fut.set_result(None)
    elif how in ("temporary", "future-temporary"):
        fut.set_exception(ChunkRejected("busy", permanent=False))
    elif how in ("permanent", "future-permanent"):
        fut.set_exception(ChunkRejected("refused", permanent=True))
    elif how == "bug":
        fut.set_exception(RuntimeError("bug"))
    else:
        fut.cancel()


class ScriptedErrors(RecordingSink):
    """The error label's sink: answers as the example says."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.answer = "accept"

    def submit(self, chunk: Chunk) -> asyncio.Future[None] | None:  # type: ignore[override]
        super().submit(chunk)
        if self.answer == "accept":
            return None
        if self.answer.startswith("raise-"):
            raise ChunkRejected("errors refuse", permanent=self.answer == "raise-permanent")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        _end(fut, self.answer)
        return fut


async def _run(sink_answer: str, errors_answer: str, callbacks: bool) -> tuple[tuple[str, Any], int]:
    main, errors = RecordingSink("main"), ScriptedErrors("errors")
    errors.answer = errors_answer
    router = Router({"@ROOT": [route("**", "main")], "@ERROR": [route("**", "errors")]}, sinks(main, errors))
    walk = router._walk
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    c = chunk("t")
    guarded = walk.guard(fut, "main", c) if callbacks else walk.guarded_wait(fut, "main", c)
    waiter = asyncio.ensure_future(guarded)
    _end(fut, sink_answer)
    try:
        await asyncio.wait_for(asyncio.shield(waiter), 2)
    except (Exception, asyncio.CancelledError):
        pass
    return outcome_of(waiter), len(errors.chunks)


@pytest.mark.parametrize("errors_answer", ERRORS)
@pytest.mark.parametrize("sink_answer", SINK)
def test_the_callbacks_end_as_the_coroutine_does(sink_answer: str, errors_answer: str) -> None:
    assert asyncio.run(_run(sink_answer, errors_answer, True)) == asyncio.run(
        _run(sink_answer, errors_answer, False)
    )


async def test_a_guarded_future_takes_no_task() -> None:
    main, errors = RecordingSink("main"), RecordingSink("errors")
    router = Router({"@ROOT": [route("**", "main")], "@ERROR": [route("**", "errors")]}, sinks(main, errors))
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    guarded = router._walk.guard(fut, "main", chunk("t"))
    assert type(guarded) is asyncio.Future  # not a coroutine the session would wrap in a task
    fut.set_exception(ChunkRejected("refused", permanent=True))
    await asyncio.wait_for(guarded, 2)  # redirected to the error label, which took it
    assert errors.tags == ["t"]

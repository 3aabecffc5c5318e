"""The task-free join of a fan-out's futures gives the outcome the coroutine path gives, whatever the sinks
answer and in whatever order they answer."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from forwardd.errors import ChunkRejected
from forwardd.router.outcome import Outcome, _gather, _join
from tests.depth import examples
from tests.router.fakes import outcome_of

#: What one sink's future ends with.
ANSWERS = st.sampled_from(["ok", "temporary", "permanent", "bug", "cancelled"])


def _finish(fut: asyncio.Future[None], answer: str, i: int) -> None:
    if answer == "ok":
        fut.set_result(None)
    elif answer == "temporary":
        fut.set_exception(ChunkRejected(f"sink{i} busy", permanent=False))
    elif answer == "permanent":
        fut.set_exception(ChunkRejected(f"sink{i} refuses", permanent=True))
    elif answer == "bug":
        fut.set_exception(RuntimeError(f"sink{i} bug"))
    else:
        fut.cancel()


async def _run(answers: list[str], order: list[int], refusals: list[bool], join: bool) -> tuple[str, Any]:
    loop = asyncio.get_running_loop()
    futs: list[asyncio.Future[None]] = [loop.create_future() for _ in answers]
    refused = [ChunkRejected(f"sync{i}", permanent=p) for i, p in enumerate(refusals)]
    waiter: asyncio.Future[None] = (
        _join(futs, refused) if join else asyncio.ensure_future(_gather(list(futs), refused))
    )
    for i in order:
        _finish(futs[i], answers[i], i)
        await asyncio.sleep(0)
    try:
        await asyncio.wait_for(asyncio.shield(waiter), 2)
    except (Exception, asyncio.CancelledError):  # the outcome is compared below
        pass
    return outcome_of(waiter)


@examples(ci=300, deep=5000, deadline=None)
@given(
    answers=st.lists(ANSWERS, min_size=2, max_size=5),
    refusals=st.lists(st.booleans(), max_size=2),
    data=st.data(),
)
def test_the_join_ends_as_the_coroutine_does(answers: list[str], refusals: list[bool], data: Any) -> None:
    order = data.draw(st.permutations(range(len(answers))))
    joined = asyncio.run(_run(answers, order, refusals, join=True))
    gathered = asyncio.run(_run(answers, order, refusals, join=False))
    assert joined == gathered


async def test_a_fan_out_of_futures_takes_no_task() -> None:
    loop = asyncio.get_running_loop()
    a: asyncio.Future[None] = loop.create_future()
    b: asyncio.Future[None] = loop.create_future()
    out = Outcome()
    out.wait(a)
    out.wait(b)
    result = out.result()
    assert type(result) is asyncio.Future  # not a coroutine the session would wrap in a task
    a.set_result(None)
    await asyncio.sleep(0)
    assert not result.done()
    b.set_result(None)
    await asyncio.wait_for(result, 2)


async def test_an_exception_is_retrieved_even_when_the_join_was_given_up() -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    a: asyncio.Future[None] = loop.create_future()
    b: asyncio.Future[None] = loop.create_future()
    joined = _join([a, b], [])
    joined.cancel()
    a.set_exception(ChunkRejected("gone", permanent=False))
    b.set_result(None)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    del a, b, joined
    gc.collect()
    assert not [c for c in seen if "never retrieved" in str(c.get("message"))]

"""The router: first match, continue, fan-out, relabel, the error label, acceptance, caching, held pieces."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from forwardd.errors import ChunkRejected
from forwardd.filters.base import Filter, Held
from forwardd.router import Route, Router, RoutingError
from forwardd.router.match import compile_pattern

from .fakes import (
    Boom,
    DropAll,
    FutureSink,
    HeldStats,
    Holder,
    Mark,
    RecordingSink,
    RejectingSink,
    Retag,
    SplitByKey,
    chunk,
    records,
)


def route(
    pattern: str,
    *outputs: str,
    filters: Sequence[Filter] = (),
    relabel: str | None = None,
    continue_: bool = False,
) -> Route:
    return Route(compile_pattern(pattern), tuple(filters), outputs, relabel, continue_)


def sinks(*items: RecordingSink) -> dict[str, RecordingSink]:
    return {s.name: s for s in items}


async def _until(predicate: Callable[[], bool]) -> None:
    """Yield to the loop until ``predicate`` holds (callers bound it with wait_for)."""
    while not predicate():
        await asyncio.sleep(0)


async def settle(result: Awaitable[None] | None) -> None:
    assert result is not None
    await asyncio.wait_for(result, 2)


# --- matching order ---------------------------------------------------------------------------------------


def test_one_route_one_sink_hands_the_same_chunk_and_is_accepted_at_once() -> None:
    out = RecordingSink("out")
    router = Router({"@ROOT": [route("app.**", "out")]}, sinks(out))
    c = chunk("app.web")
    assert router.entry()(c) is None
    assert out.chunks == [c]
    assert out.chunks[0] is c
    assert router.stats.routed == 1


def test_first_matching_route_wins() -> None:
    a, b = RecordingSink("a"), RecordingSink("b")
    router = Router({"@ROOT": [route("x.*", "a"), route("x.**", "b")]}, sinks(a, b))
    ingest = router.entry()
    ingest(chunk("x.y"))
    ingest(chunk("x.y.z"))
    ingest(chunk("x"))
    assert a.tags == ["x.y"]
    assert b.tags == ["x.y.z", "x"]


def test_continue_lets_later_routes_see_the_chunk_until_one_does_not_continue() -> None:
    a, b, c, d = (RecordingSink(n) for n in "abcd")
    mark = Mark("copied")
    router = Router(
        {
            "@ROOT": [
                route("x.**", "a", filters=[mark], continue_=True),
                route("nomatch", "d"),
                route("x.**", "b"),
                route("x.**", "c"),
            ]
        },
        sinks(a, b, c, d),
    )
    assert router.entry()(chunk("x.1", {"v": 1})) is None
    assert records(a) == [{"v": 1, "copied": True}]
    # The second route sees the original chunk, not the first route's filtered copy.
    assert records(b) == [{"v": 1}]
    assert c.chunks == []
    assert d.chunks == []


def test_continue_after_a_dropping_filter_still_reaches_the_next_route() -> None:
    a, b = RecordingSink("a"), RecordingSink("b")
    router = Router(
        {"@ROOT": [route("**", "a", filters=[DropAll()], continue_=True), route("**", "b")]},
        sinks(a, b),
    )
    assert router.entry()(chunk("t")) is None
    assert a.chunks == []
    assert b.tags == ["t"]


def test_fan_out_reaches_every_named_output() -> None:
    a, b = RecordingSink("a"), RecordingSink("b")
    router = Router({"@ROOT": [route("**", "a", "b")]}, sinks(a, b))
    c = chunk("t")
    assert router.entry()(c) is None
    assert a.chunks == [c]
    assert b.chunks == [c]


def test_a_route_without_outputs_accepts_and_discards() -> None:
    router = Router({"@ROOT": [route("**")]}, {})
    assert router.entry()(chunk("t")) is None
    assert router.stats.routed == 1


def test_filters_run_in_order_before_the_outputs() -> None:
    out = RecordingSink("out")
    first, second = Mark("k", 1), Mark("k", 2)
    router = Router({"@ROOT": [route("**", "out", filters=[first, second])]}, sinks(out))
    router.entry()(chunk("t", {"a": 0}))
    assert records(out) == [{"a": 0, "k": 2}]
    assert first.seen == second.seen == ["t"]


def test_a_dropping_filter_accepts_the_chunk_and_skips_the_outputs() -> None:
    out = RecordingSink("out")
    after = Mark("after")
    router = Router({"@ROOT": [route("**", "out", filters=[DropAll(), after])]}, sinks(out))
    assert router.entry()(chunk("t")) is None
    assert out.chunks == []
    assert after.seen == []


# --- tag rewriting and relabel ----------------------------------------------------------------------------


def test_a_retagged_chunk_stays_on_its_route() -> None:
    a, b = RecordingSink("a"), RecordingSink("b")
    after = Mark("after")
    router = Router(
        {"@ROOT": [route("in.**", "a", filters=[Retag("other.x"), after]), route("other.**", "b")]},
        sinks(a, b),
    )
    router.entry()(chunk("in.x"))
    assert a.tags == ["other.x"]
    assert after.seen == ["other.x"]
    assert b.chunks == []


def test_a_filter_that_splits_a_chunk_sends_every_piece_through_the_rest_of_its_route() -> None:
    out, b_x, b_y = RecordingSink("out"), RecordingSink("b_x"), RecordingSink("b_y")
    router = Router(
        {
            "@ROOT": [route("in", "out", filters=[SplitByKey("to"), Mark("after")], relabel="@B")],
            "@B": [route("x", "b_x"), route("y", "b_y")],
        },
        sinks(out, b_x, b_y),
    )
    router.entry()(chunk("in", {"to": "x", "i": 0}, {"to": "y", "i": 1}, {"to": "x", "i": 2}))
    assert out.tags == ["x", "y"]
    assert [r["i"] for r in records(b_x)] == [0, 2]
    assert records(b_y) == [{"to": "y", "i": 1, "after": True}]


@pytest.mark.parametrize("error_label", [False, True])
async def test_a_split_chunk_on_a_single_output_route_is_accepted_when_every_piece_is(
    error_label: bool,
) -> None:
    out, errors = FutureSink("out"), RecordingSink("errors")
    labels = {"@ROOT": [route("in", "out", filters=[SplitByKey("to"), Mark("after")])]}
    if error_label:
        labels["@ERROR"] = [route("**", "errors")]
    router = Router(labels, sinks(out, errors))
    result = router.entry()(chunk("in", {"to": "x"}, {"to": "y"}))
    assert out.tags == ["x", "y"]
    assert all(r["after"] for r in records(out))
    assert result is not None
    task = asyncio.ensure_future(result)
    out.futures[0].set_result(None)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    out.futures[1].set_result(None)
    await asyncio.wait_for(task, 2)


def test_relabel_hands_the_filtered_chunk_to_the_other_labels_routes_by_its_new_tag() -> None:
    root_out, b_out, b_other = RecordingSink("root"), RecordingSink("b"), RecordingSink("b_other")
    router = Router(
        {
            "@ROOT": [route("in.**", "root", filters=[Retag("new.tag")], relabel="@B")],
            "@B": [route("in.**", "b_other"), route("new.*", "b", filters=[Mark("in_b")])],
        },
        sinks(root_out, b_out, b_other),
    )
    assert router.entry()(chunk("in.x", {"v": 1})) is None
    assert root_out.tags == ["new.tag"]
    assert b_out.tags == ["new.tag"]
    assert records(b_out) == [{"v": 1, "in_b": True}]
    assert b_other.chunks == []
    assert router.stats.routed == 2  # once per label


def test_entry_for_a_source_label_starts_there() -> None:
    root_out, b_out = RecordingSink("root"), RecordingSink("b")
    router = Router({"@ROOT": [route("**", "root")], "@B": [route("**", "b")]}, sinks(root_out, b_out))
    router.entry("@B")(chunk("t"))
    assert b_out.tags == ["t"]
    assert root_out.chunks == []


@pytest.mark.parametrize(
    ("labels", "cycle"),
    [
        ({"@ROOT": [route("**", relabel="@ROOT")]}, "@ROOT -> @ROOT"),
        (
            {"@ROOT": [route("**", relabel="@A")], "@A": [route("**", relabel="@ROOT")]},
            "@ROOT -> @A -> @ROOT",
        ),
        (
            {
                "@ROOT": [route("a", relabel="@A")],
                "@A": [route("x"), route("y", relabel="@B")],
                "@B": [route("z", relabel="@A")],
            },
            "@A -> @B -> @A",
        ),
    ],
)
def test_relabel_loops_are_refused(labels: dict[str, list[Route]], cycle: str) -> None:
    with pytest.raises(RoutingError, match="relabel loop") as info:
        Router(labels, {})
    assert cycle in str(info.value)


def test_a_relabel_diamond_is_not_a_loop() -> None:
    out = RecordingSink("out")
    router = Router(
        {
            "@ROOT": [route("**", relabel="@A", continue_=True), route("**", relabel="@B")],
            "@A": [route("**", relabel="@C")],
            "@B": [route("**", relabel="@C")],
            "@C": [route("**", "out")],
        },
        sinks(out),
    )
    router.entry()(chunk("t"))
    assert out.tags == ["t", "t"]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"@ROOT": [route("**", "missing")]}, "unknown output 'missing'"),
        ({"@ROOT": [route("**", relabel="@NOPE")]}, "unknown label '@NOPE'"),
    ],
)
def test_unknown_names_are_refused(labels: dict[str, list[Route]], message: str) -> None:
    with pytest.raises(RoutingError, match=message):
        Router(labels, {})


def test_entry_for_an_unknown_label_is_refused() -> None:
    router = Router({"@ROOT": []}, {})
    with pytest.raises(RoutingError, match="@OTHER"):
        router.entry("@OTHER")


# --- no match ---------------------------------------------------------------------------------------------


def test_unmatched_chunks_are_accepted_counted_and_logged_at_powers_of_two() -> None:
    out = RecordingSink("out")
    router = Router({"@ROOT": [route("app.**", "out")], "@B": []}, sinks(out))
    ingest = router.entry()
    with capture_logs() as logs:
        results = [ingest(chunk(f"other.{i}")) for i in range(9)]
        router.entry("@B")(chunk("b.tag"))
    assert results == [None] * 9
    assert out.chunks == []
    assert router.stats.unmatched == 10
    assert router.stats.routed == 0
    lines = [e for e in logs if e["event"] == "route.unmatched"]
    assert [(e["count"], e["tag"], e["label"]) for e in lines] == [
        (1, "other.0", "@ROOT"),
        (2, "other.1", "@ROOT"),
        (4, "other.3", "@ROOT"),
        (8, "other.7", "@ROOT"),
    ]
    assert all(e["log_level"] == "warning" for e in lines)


def test_unmatched_logging_goes_every_512_after_256() -> None:
    router = Router({"@ROOT": []}, {})
    ingest = router.entry()
    c = chunk("t")
    with capture_logs() as logs:
        for _ in range(1600):
            ingest(c)
    counts = [e["count"] for e in logs]
    assert counts == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1536]


# --- caching ----------------------------------------------------------------------------------------------


def test_the_cached_decision_is_per_tag_and_per_label() -> None:
    a, b, c = RecordingSink("a"), RecordingSink("b"), RecordingSink("c")
    router = Router({"@ROOT": [route("x", "a"), route("y", "b")], "@L": [route("x", "c")]}, sinks(a, b, c))
    root, other = router.entry(), router.entry("@L")
    for tag in ["x", "x", "y", "x", "y", "z"]:
        root(chunk(tag))
        other(chunk(tag))
    assert a.tags == ["x", "x", "x"]
    assert b.tags == ["y", "y"]
    assert c.tags == ["x", "x", "x"]
    assert router.stats.unmatched == 1 + 3  # z in @ROOT; y, y, z in @L


def test_a_tiny_cache_evicts_and_still_routes_every_tag_right() -> None:
    outs = [RecordingSink(f"o{i}") for i in range(5)]
    router = Router({"@ROOT": [route(f"t{i}", f"o{i}") for i in range(5)]}, sinks(*outs), cache_size=2)
    ingest = router.entry()
    order = [0, 1, 2, 0, 3, 4, 1, 1, 0, 4]
    for i in order:
        ingest(chunk(f"t{i}"))
    for i, out in enumerate(outs):
        assert out.tags == [f"t{i}"] * order.count(i)
    assert len(router._decisions["@ROOT"]) <= 2


def test_retagged_chunks_do_not_poison_the_cache_for_their_new_tag() -> None:
    a, b = RecordingSink("a"), RecordingSink("b")
    router = Router({"@ROOT": [route("in", "a", filters=[Retag("out")]), route("out", "b")]}, sinks(a, b))
    ingest = router.entry()
    ingest(chunk("in"))
    ingest(chunk("out"))
    ingest(chunk("in"))
    assert a.tags == ["out", "out"]
    assert b.tags == ["out"]


_sink_names = ["s0", "s1", "s2"]
_route_spec = st.tuples(
    st.sampled_from(["a", "b", "*", "a.*", "**", "{a,b}"]), st.sampled_from(_sink_names), st.booleans()
)


@settings(deadline=None)
@given(st.lists(_route_spec, max_size=5), st.lists(st.sampled_from(["a", "b", "c", "a.x"]), max_size=8))
def test_delivery_agrees_with_first_match_and_continue(
    specs: list[tuple[str, str, bool]], tags: list[str]
) -> None:
    outs = {n: RecordingSink(n) for n in _sink_names}
    router = Router({"@ROOT": [route(p, s, continue_=c) for p, s, c in specs]}, outs)
    ingest = router.entry()
    expected: dict[str, list[str]] = {n: [] for n in _sink_names}
    for tag in tags:
        assert ingest(chunk(tag)) is None
        for pattern, name, cont in specs:
            if compile_pattern(pattern).matches(tag):
                expected[name].append(tag)
                if not cont:
                    break
    assert {n: s.tags for n, s in outs.items()} == expected


# --- acceptance: awaitables and rejections ----------------------------------------------------------------


async def test_a_single_awaiting_sink_returns_its_own_awaitable() -> None:
    out = FutureSink("out")
    router = Router({"@ROOT": [route("**", "out")]}, sinks(out))
    result = router.entry()(chunk("t"))
    assert result is out.futures[0]


async def test_fan_out_resolves_only_when_every_sink_accepted() -> None:
    a, b, now = FutureSink("a"), FutureSink("b"), RecordingSink("now")
    router = Router({"@ROOT": [route("**", "a", "now", "b")]}, sinks(a, b, now))
    result = router.entry()(chunk("t"))
    assert result is not None
    task = asyncio.ensure_future(result)
    b.futures[0].set_result(None)
    for _ in range(5):
        await asyncio.sleep(0)  # let the task run as far as it can
    assert not task.done()
    a.futures[0].set_result(None)
    await asyncio.wait_for(task, 2)
    assert now.tags == ["t"]


@pytest.mark.parametrize(
    ("permanences", "expected_permanent"),
    [((False,), False), ((True,), True), ((True, True), True), ((True, False), False)],
)
async def test_fan_out_rejection_is_permanent_only_when_every_failure_is(
    permanences: tuple[bool, ...], expected_permanent: bool
) -> None:
    ok = FutureSink("ok")
    bad = [RejectingSink(f"bad{i}", permanent=p) for i, p in enumerate(permanences)]
    router = Router({"@ROOT": [route("**", "ok", *(s.name for s in bad))]}, sinks(ok, *bad))
    result = router.entry()(chunk("t"))
    ok.futures[0].set_result(None)
    with pytest.raises(ChunkRejected) as info:
        await settle(result)
    assert info.value.permanent is expected_permanent
    for s in bad:
        assert s.name in info.value.reason


async def test_a_synchronous_rejection_is_raised_from_the_call() -> None:
    bad = RejectingSink("bad", permanent=False, sync=True)
    router = Router({"@ROOT": [route("**", "bad")]}, sinks(bad))
    with pytest.raises(ChunkRejected, match="bad refuses"):
        router.entry()(chunk("t"))


async def test_a_synchronous_rejection_in_a_fan_out_waits_for_the_other_sinks() -> None:
    ok, bad = FutureSink("ok"), RejectingSink("bad", permanent=True, sync=True)
    router = Router({"@ROOT": [route("**", "ok", "bad")]}, sinks(ok, bad))
    result = router.entry()(chunk("t"))
    assert result is not None
    task = asyncio.ensure_future(result)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    ok.futures[0].set_result(None)
    with pytest.raises(ChunkRejected) as info:
        await asyncio.wait_for(task, 2)
    assert info.value.permanent


# --- the error label --------------------------------------------------------------------------------------


def test_a_failing_filter_sends_its_input_to_the_error_label() -> None:
    out, errors = RecordingSink("out"), RecordingSink("errors")
    router = Router(
        {
            "@ROOT": [route("app.**", "out", filters=[Mark("before"), Boom("parser")])],
            "@ERROR": [route("**", "errors")],
        },
        sinks(out, errors),
    )
    with capture_logs() as logs:
        assert router.entry()(chunk("app.x", {"v": 1})) is None
    assert out.chunks == []
    assert records(errors) == [{"v": 1, "before": True}]
    assert router.stats.filter_errors == 1
    assert router.stats.to_error_label == 1
    (line,) = [e for e in logs if e["event"] == "filter.failed"]
    assert line["filter"] == "parser"
    assert line["tag"] == "app.x"
    assert "cannot handle app.x" in line["error"]
    assert line["to_label"] == "@ERROR"


def test_a_failing_filter_without_an_error_label_drops_and_counts() -> None:
    out = RecordingSink("out")
    router = Router({"@ROOT": [route("**", "out", filters=[Boom()])]}, sinks(out))
    with capture_logs() as logs:
        assert router.entry()(chunk("t")) is None
    assert out.chunks == []
    assert router.stats.filter_errors == 1
    assert router.stats.to_error_label == 0
    assert [e["event"] for e in logs] == ["filter.failed"]


def test_a_failing_filter_inside_the_error_label_does_not_loop() -> None:
    errors = RecordingSink("errors")
    router = Router(
        {
            "@ROOT": [route("**", filters=[Boom("first")])],
            "@ERROR": [route("**", "errors", filters=[Boom("second")])],
        },
        sinks(errors),
    )
    assert router.entry()(chunk("t")) is None
    assert errors.chunks == []
    assert router.stats.filter_errors == 2
    assert router.stats.to_error_label == 1


@pytest.mark.parametrize("sync", [False, True])
async def test_a_permanent_rejection_goes_to_the_error_label_and_is_accepted(sync: bool) -> None:
    bad, errors = RejectingSink("bad", permanent=True, sync=sync), FutureSink("errors")
    router = Router({"@ROOT": [route("**", "bad")], "@ERROR": [route("**", "errors")]}, sinks(bad, errors))
    with capture_logs() as logs:
        result = router.entry()(chunk("t"))
        assert result is not None
        task = asyncio.ensure_future(result)
        for _ in range(5):
            await asyncio.sleep(0)
        assert errors.tags == ["t"]
        assert not task.done()  # accepted only once the error label's sink has it
        errors.futures[0].set_result(None)
        await asyncio.wait_for(task, 2)
    assert router.stats.to_error_label == 1
    (line,) = [e for e in logs if e["event"] == "sink.rejected"]
    assert line["output"] == "bad"


@pytest.mark.parametrize("sync", [False, True])
async def test_a_temporary_rejection_reaches_the_session_even_with_an_error_label(sync: bool) -> None:
    bad, errors = RejectingSink("bad", permanent=False, sync=sync), RecordingSink("errors")
    router = Router({"@ROOT": [route("**", "bad")], "@ERROR": [route("**", "errors")]}, sinks(bad, errors))
    with pytest.raises(ChunkRejected) as info:
        await settle(router.entry()(chunk("t")))
    assert not info.value.permanent
    assert errors.chunks == []


async def test_a_permanent_rejection_in_a_fan_out_with_an_error_label() -> None:
    ok, bad, errors = RecordingSink("ok"), RejectingSink("bad", permanent=True), RecordingSink("errors")
    router = Router(
        {"@ROOT": [route("**", "ok", "bad")], "@ERROR": [route("**", "errors")]}, sinks(ok, bad, errors)
    )
    await settle(router.entry()(chunk("t")))
    assert ok.tags == ["t"]
    assert errors.tags == ["t"]


async def test_a_permanent_rejection_inside_the_error_label_is_propagated() -> None:
    bad, worse = RejectingSink("bad", permanent=True), RejectingSink("worse", permanent=True)
    router = Router({"@ROOT": [route("**", "bad")], "@ERROR": [route("**", "worse")]}, sinks(bad, worse))
    with pytest.raises(ChunkRejected, match="worse refuses") as info:
        await settle(router.entry()(chunk("t")))
    assert info.value.permanent
    assert router.stats.to_error_label == 1


async def test_an_error_label_that_matches_nothing_accepts_and_drops() -> None:
    bad = RejectingSink("bad", permanent=True)
    router = Router({"@ROOT": [route("**", "bad")], "@ERROR": [route("only.this")]}, sinks(bad))
    await settle(router.entry()(chunk("t")))
    assert router.stats.unmatched == 1


# --- held pieces: expire and drain ------------------------------------------------------------------------


def test_expire_passes_old_pieces_through_the_rest_of_their_route() -> None:
    out = RecordingSink("out")
    before, holder, after = Mark("before"), Holder(ttl=5.0), Mark("after")
    router = Router({"@ROOT": [route("**", "out", filters=[before, holder, after])]}, sinks(out))
    ingest = router.entry()
    holder.now = 0.0
    assert ingest(chunk("t", {"n": 1})) is None
    holder.now = 3.0
    ingest(chunk("t", {"n": 2}))
    assert out.chunks == []
    assert router.expire(4.0) is None
    assert out.chunks == []
    assert router.expire(6.0) is None
    assert records(out) == [{"n": 1, "before": True, "after": True}]
    assert before.seen == ["t", "t"]  # filters before the holder do not run again
    assert router.drain() is None
    assert [r["n"] for r in records(out)] == [1, 2]
    assert router.drain() is None
    assert len(out.chunks) == 2


def test_drain_releases_upstream_holders_before_downstream_ones() -> None:
    out = RecordingSink("out")
    first, second = Holder("first"), Holder("second")
    router = Router(
        {
            "@ROOT": [route("**", filters=[first], relabel="@B")],
            "@B": [route("**", "out", filters=[Mark("b"), second])],
        },
        sinks(out),
    )
    router.entry()(chunk("t"))
    assert len(first.held) == 1
    assert router.drain() is None
    assert records(out) == [{"n": 0, "b": True}]
    assert first.held == second.held == []


async def test_expired_pieces_are_accepted_through_an_awaitable() -> None:
    out = FutureSink("out")
    holder = Holder(ttl=1.0)
    router = Router({"@ROOT": [route("**", "out", filters=[holder])]}, sinks(out))
    router.entry()(chunk("t"))
    result = router.expire(10.0)
    assert result is out.futures[0]


async def test_run_expiry_releases_pieces_on_its_own() -> None:
    out = RecordingSink("out")
    holder = Holder(ttl=1.0)
    router = Router({"@ROOT": [route("**", "out", filters=[holder])]}, sinks(out))
    router.entry()(chunk("t"))
    task = asyncio.create_task(router.run_expiry(0.001, clock=lambda: 100.0))
    try:
        await asyncio.wait_for(out.received.wait(), 2)
    finally:
        task.cancel()
    assert out.tags == ["t"]


async def test_run_expiry_counts_what_a_sink_refused() -> None:
    bad = RejectingSink("bad", permanent=False)
    holder = Holder(ttl=1.0)
    router = Router({"@ROOT": [route("**", "bad", filters=[holder])]}, sinks(bad))
    router.entry()(chunk("t"))
    task = asyncio.create_task(router.run_expiry(0.001, clock=lambda: 100.0))
    try:
        await asyncio.wait_for(bad.received.wait(), 2)
        await asyncio.wait_for(_until(lambda: router.stats.held_rejected > 0), 2)
    finally:
        task.cancel()
    assert router.stats.held_rejected == 1


def test_the_stateful_filters_are_listed_once_each_upstream_first() -> None:
    """What the daemon starts, stops and reports: found by the protocol, not by the filter's type."""
    first, second, plain = Holder("first"), Holder("second"), Mark("plain")
    router = Router(
        {
            "@B": [route("**", filters=[plain, second])],
            "@ROOT": [route("**", filters=[first], relabel="@B")],
        },
        {},
    )
    assert router.stateful == (first, second)


def test_a_stateful_filter_used_twice_is_refused() -> None:
    holder = Holder()
    with pytest.raises(RoutingError, match="appears twice"):
        Router({"@ROOT": [route("a", filters=[holder]), route("b", filters=[holder])]}, {})


def test_a_failing_drain_is_counted_and_the_others_still_drain() -> None:
    class BadDrain(Holder):
        def drain(self, *, keep: bool = True) -> list:  # type: ignore[type-arg]
            raise RuntimeError("lost it")

    out = RecordingSink("out")
    bad, good = BadDrain("bad"), Holder("good")
    router = Router(
        {"@ROOT": [route("a", "out", filters=[bad]), route("b", "out", filters=[good])]}, sinks(out)
    )
    router.entry()(chunk("a"))
    router.entry()(chunk("b"))
    with capture_logs() as logs:
        assert router.drain() is None
    assert out.tags == ["b"]
    assert router.stats.filter_errors == 1
    assert [(e["event"], e["filter"], e["hook"]) for e in logs] == [("filter.failed", "bad", "drain")]


# --- Held: a filter's own commit and its after-acceptance callback ----------------------------------------


class Journaling:
    """Passes chunks on wrapped in a Held: its commit is a future the test resolves (the journal's fsync),
    and it notes when the router reports everything accepted."""

    name = "journaling"

    def __init__(self) -> None:
        self.commits: list[asyncio.Future[None]] = []
        self.accepted: list[str] = []

    def __call__(self, c):  # type: ignore[no-untyped-def]
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.commits.append(fut)
        return Held(c, fut, lambda: self.accepted.append(c.tag))

    def expire(self, now: float):  # type: ignore[no-untyped-def]
        return Held([chunk("app.late")], None, lambda: self.accepted.append("late"))

    def drain(self, *, keep: bool = True) -> list:  # type: ignore[type-arg]
        return []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def stats(self) -> HeldStats:
        return HeldStats()


async def test_held_commit_gates_acceptance_and_the_callback_follows_the_sinks() -> None:
    out = FutureSink("out")
    j = Journaling()
    router = Router({"@ROOT": [route("app.**", "out", filters=[j])]}, sinks(out))
    result = router.entry()(chunk("app.web"))
    assert result is not None
    task = asyncio.ensure_future(result)
    out.futures[0].set_result(None)  # the sink has it, the journal not yet
    await asyncio.sleep(0)
    assert not task.done()
    assert j.accepted == []
    j.commits[0].set_result(None)
    await asyncio.wait_for(task, 2)
    assert j.accepted == ["app.web"]


async def test_held_callback_runs_at_once_when_everything_was_accepted_synchronously() -> None:
    out = RecordingSink("out")
    accepted: list[int] = []

    def f(c):  # type: ignore[no-untyped-def]
        return Held(c, None, lambda: accepted.append(1))

    f.name = "f"  # type: ignore[attr-defined]
    router = Router({"@ROOT": [route("app.**", "out", filters=[f, Mark("m")])]}, sinks(out))
    assert router.entry()(chunk("app.web")) is None
    assert accepted == [1]
    assert len(out.chunks) == 1


async def test_held_from_expire_calls_back_once_the_released_chunks_are_in() -> None:
    out = FutureSink("out")
    j = Journaling()
    router = Router({"@ROOT": [route("app.**", "out", filters=[j])]}, sinks(out))
    result = router.expire(0.0)
    assert result is not None
    task = asyncio.ensure_future(result)
    await asyncio.sleep(0)
    assert [c.tag for c in out.chunks] == ["app.late"]
    assert j.accepted == []
    out.futures[0].set_result(None)
    await asyncio.wait_for(task, 2)
    assert j.accepted == ["late"]


async def test_held_callback_runs_after_a_permanent_refusal_but_not_a_temporary_one() -> None:
    """A permanent refusal is acked to the client, which will not resend: what the filter kept for a
    resend can go. A temporary one is resent, so it must stay."""
    for permanent in (True, False):
        bad = RejectingSink("bad", permanent=permanent)
        j = Journaling()
        router = Router({"@ROOT": [route("app.**", "bad", filters=[j])]}, sinks(bad))
        result = router.entry()(chunk("app.web"))
        j.commits[0].set_result(None)
        with pytest.raises(ChunkRejected):
            await asyncio.wait_for(result, 2)  # type: ignore[arg-type]
        assert j.accepted == (["app.web"] if permanent else [])


@pytest.mark.parametrize("extra_route", [False, True])
def test_a_filter_that_cannot_take_a_chunk_now_is_a_rejection_not_a_dropped_bug(extra_route: bool) -> None:
    """docker_partial's journal refusing a chunk (closing) must reach the client as a temporary rejection
    (no ack: it resends), not be counted as a filter failure and dropped (acked and lost)."""

    def refusing(c):  # type: ignore[no-untyped-def]
        raise ChunkRejected("journal closing", permanent=False)

    refusing.name = "refusing"  # type: ignore[attr-defined]
    out = RecordingSink("out")
    routes = [route("app.**", "out", filters=[refusing], continue_=extra_route)]
    if extra_route:  # a second matching route: the general walk instead of the one-route fast path
        routes.append(route("app.**", "out"))
    router = Router({"@ROOT": routes}, sinks(out))
    with pytest.raises(ChunkRejected) as info:
        router.entry()(chunk("app.web"))
    assert not info.value.permanent
    assert router.stats.filter_errors == 0

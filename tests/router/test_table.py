"""The route table's pure checks (what configuration checks will ask it) and its relabel order."""

from __future__ import annotations

import graphlib
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from forwardd.router import ROOT_LABEL, Route, RouteTable, compile_pattern, pattern_error, relabel_cycles


def test_pattern_error_names_the_pattern_and_the_reason() -> None:
    assert pattern_error("app.{web,db}.**") is None
    assert pattern_error("/re/") is None
    message = pattern_error("app.{web")
    assert message is not None
    assert "app.{web" in message
    assert "unclosed" in message
    assert pattern_error("/[/") is not None


def test_a_cycle_is_reported_at_the_relabel_that_closes_it() -> None:
    """The shape of tests/config/test_errors.py::test_relabel_cycle, with the configuration's key paths."""
    edges = {
        ROOT_LABEL: [(("routes", 0, "relabel"), "a")],
        "a": [(("labels", "a", 0, "relabel"), "b")],
        "b": [(("labels", "b", 1, "relabel"), "a")],
    }
    [cycle] = relabel_cycles(edges, sorted(edges))
    assert cycle.location == ("labels", "b", 1, "relabel")
    assert str(cycle) == "a -> b -> a"


def test_each_cycle_once_and_every_separate_one() -> None:
    edges = {
        "x": [("x0", "x")],  # a label relabelling to itself
        "a": [("a0", "b")],
        "b": [("b0", "a"), ("b1", "a")],  # the same cycle closed twice: one report
        "c": [("c0", "d"), ("c1", "d")],
        "d": [],  # a diamond's shape: no cycle
    }
    found = relabel_cycles(edges)
    assert [(c.location, c.labels) for c in found] == [("x0", ("x", "x")), ("b0", ("a", "b", "a"))]


def test_a_long_chain_of_relabels_is_no_recursion() -> None:
    n = 20_000
    edges = {f"l{i}": [(i, f"l{i + 1}")] for i in range(n)}
    assert relabel_cycles(edges, ["l0"]) == []
    edges[f"l{n}"] = [(n, "l0")]
    [cycle] = relabel_cycles(edges, ["l0"])
    assert (cycle.location, len(cycle.labels)) == (n, n + 2)


_labels = st.sampled_from("abcde")


@settings(deadline=None)
@given(st.lists(st.tuples(_labels, _labels), max_size=10))
def test_cycles_are_found_exactly_when_there_are_some_and_are_real(pairs: list[tuple[str, str]]) -> None:
    edges: dict[str, list[tuple[int, str]]] = {}
    for i, (src, dst) in enumerate(pairs):
        edges.setdefault(src, []).append((i, dst))
    found = relabel_cycles(edges)
    sorter = graphlib.TopologicalSorter({src: {dst for _, dst in out} for src, out in edges.items()})
    try:
        sorter.prepare()
        acyclic = True
    except graphlib.CycleError:
        acyclic = False
    assert (found == []) == acyclic
    for cycle in found:
        labels = cycle.labels
        assert labels[0] == labels[-1]
        for src, dst in itertools.pairwise(labels):
            assert any(d == dst for _, d in edges[src])
        assert pairs[cycle.location] == (labels[-2], labels[-1])  # the relabel that closes it


def test_the_relabel_order_puts_every_source_before_its_target() -> None:
    def to(label: str) -> Route:
        return Route(compile_pattern("**"), relabel=label)

    table = RouteTable(
        {"@C": [], "@B": [to("@C")], "@A": [to("@C"), to("@B")], ROOT_LABEL: [to("@A")]},
        {},
    )
    order = table.order
    assert sorted(order) == sorted(table.labels)
    for before, after in [(ROOT_LABEL, "@A"), ("@A", "@B"), ("@A", "@C"), ("@B", "@C")]:
        assert order.index(before) < order.index(after)

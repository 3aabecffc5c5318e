"""The Prometheus view of a status (:func:`forwardd.ops.snapshot.merge`): a custom prometheus_client
Collector, so that a scrape reads the counters the hot path keeps anyway and nothing is counted twice.

Names follow Prometheus's conventions: ``forwardd_<component>_<what>_<unit>``, counters end in ``_total``
(prometheus_client adds it), times in seconds, sizes in bytes; labels ``source`` and ``output``; with
``workers: N`` the values are sums over the workers (the oldest age is the oldest) and
``forwardd_worker_up{worker}`` says which answered. Per-tag counts are left out on purpose (docker tags
carry container ids: a series per container is what takes a Prometheus down); ``/status`` has them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from forwardd.ops.snapshot import Status

__all__ = ["METRICS", "StatusCollector"]

#: (kind, metric name, status key, help) per source. Counters are named without ``_total``.
SOURCE_METRICS = (
    ("gauge", "forwardd_source_up", "listening", "1 when the source accepts connections (every worker)."),
    ("gauge", "forwardd_source_connections_open", "open_connections", "Connections open now."),
    ("counter", "forwardd_source_connections", "connections", "Connections accepted."),
    ("counter", "forwardd_source_connections_refused", "refused_connections", "Connections refused (limit)."),
    ("counter", "forwardd_source_received_bytes", "bytes", "Bytes read from clients."),
    ("counter", "forwardd_source_requests", "chunks", "Forward requests (chunks) received."),
    ("counter", "forwardd_source_events", "events", "Events received."),
    ("counter", "forwardd_source_acks", "acks", "Acks sent (each means committed to every buffer)."),
    ("counter", "forwardd_source_nacks", "nacks", "Requests not accepted for now (connection closed)."),
    ("counter", "forwardd_source_rejected_chunks", "rejected", "Chunks refused for good (acked, dropped)."),
    ("counter", "forwardd_source_invalid_entries", "invalid_entries", "Entries left out (not events)."),
    ("counter", "forwardd_source_invalid_times", "invalid_times", "Entries left out for their time."),
    ("counter", "forwardd_source_dropped_events", "dropped_events", "Events acked and dropped."),
    ("counter", "forwardd_source_protocol_errors", "protocol_errors", "Connections closed on a violation."),
    ("counter", "forwardd_source_handshake_failures", "handshake_failures", "Failed shared-key handshakes."),
    ("counter", "forwardd_source_tls_failures", "tls_failures", "Failed TLS handshakes."),
    ("counter", "forwardd_source_heartbeats", "heartbeats", "Heartbeats answered (TCP and UDP)."),
    ("counter", "forwardd_source_backpressure_pauses", "backpressure_pauses", "Reads paused for acks."),
    ("counter", "forwardd_source_budget_pauses", "budget_pauses", "Reads paused for the memory budget."),
)

#: The same per output.
OUTPUT_METRICS = (
    ("gauge", "forwardd_output_queued_chunks", "queued_chunks", "Chunks in the buffer, not yet delivered."),
    ("gauge", "forwardd_output_queued_bytes", "queued_bytes", "Bytes in the buffer, not yet delivered."),
    ("gauge", "forwardd_output_buffer_limit_bytes", "max_size", "buffer.max_size (summed over workers)."),
    ("gauge", "forwardd_output_buffer_full", "full", "1 while the buffer is full (clients held back)."),
    (
        "gauge",
        "forwardd_output_oldest_queued_age_seconds",
        "oldest_age_seconds",
        "Age of the oldest chunk not yet delivered (since it was received); 0 when none.",
    ),
    (
        "gauge",
        "forwardd_output_failing_seconds",
        "failing_seconds",
        "How long writes have kept failing (retried with back-off); 0 while they succeed.",
    ),
    (
        "gauge",
        "forwardd_output_last_error_timestamp_seconds",
        "last_error_at",
        "Unix time of the last failed write (0: none); the error's text is in /status.",
    ),
    ("counter", "forwardd_output_delivered_events", "delivered_events", "Events delivered."),
    ("counter", "forwardd_output_delivered_bytes", "delivered_bytes", "Entry bytes delivered."),
    ("counter", "forwardd_output_retries", "retries", "Writes retried after a retryable failure."),
    (
        "counter",
        "forwardd_output_dead_lettered_events",
        "dead_lettered_events",
        "Events written to the dead-letter folder.",
    ),
    ("counter", "forwardd_output_dead_letter_files", "dead_lettered", "Dead-letter files written."),
    ("counter", "forwardd_output_error_label_events", "to_error_label", "Events sent to the @ERROR label."),
    ("counter", "forwardd_output_dropped_events", "dropped", "Events dropped (when_full: drop_oldest)."),
    ("counter", "forwardd_output_unexpected_errors", "unexpected_errors", "Writes that raised a bug."),
    ("counter", "forwardd_output_isolations", "isolations", "Batches split to isolate failing events."),
    ("counter", "forwardd_output_loop_crashes", "loop_crashes", "Crashes of the delivery loop (restarted)."),
)

#: The router's counters: (name, status key, help).
ROUTER_METRICS = (
    ("forwardd_router_routed_chunks", "routed", "Chunks that matched a route."),
    ("forwardd_router_unmatched_chunks", "unmatched", "Chunks that matched no route (dropped)."),
    ("forwardd_router_filter_errors", "filter_errors", "Chunks on which a filter raised."),
    ("forwardd_router_filter_failed_events", "filter_failed_events", "Events isolated as failing a filter."),
    ("forwardd_router_error_label_events", "to_error_label", "Filter-failed events sent to @ERROR."),
    ("forwardd_router_held_rejected_chunks", "held_rejected", "Held chunks an output refused on release."),
    (
        "forwardd_router_parked_limit_reached",
        "parked_limit_reached",
        "Times chunks kept during a reload passed their bound: connections owing acks stopped reading.",
    ),
)

#: Every metric name exported (as scraped: counters with ``_total``), for the README's table and tests.
METRICS = tuple(
    [f"{n}_total" if k == "counter" else n for k, n, _, _ in SOURCE_METRICS]
    + ["forwardd_source_ack_latency_seconds"]
    + [f"{n}_total" if k == "counter" else n for k, n, _, _ in OUTPUT_METRICS]
    + ["forwardd_output_delivery_latency_seconds"]
    + [f"{n}_total" for n, _, _ in ROUTER_METRICS]
    + ["forwardd_build_info", "forwardd_ready", "forwardd_worker_up"]
)


def _number(value: Any) -> float:
    if value is None:
        return 0.0
    return float(value)


def _histogram(name: str, doc: str, label: str, items: dict[str, dict[str, Any]], key: str) -> Metric:
    fam = HistogramMetricFamily(name, doc, labels=[label])
    for item_name, item in items.items():
        hist = item.get(key)
        if not hist:
            continue
        running = 0
        buckets = []
        for bound, n in zip(hist["bounds"], hist["counts"], strict=False):
            running += n
            buckets.append((repr(float(bound)), running))
        running += hist["counts"][-1]
        buckets.append(("+Inf", running))
        fam.add_metric([item_name], buckets, sum_value=hist["sum"])
    return fam


class StatusCollector(Collector):
    """Yields the metric families of one status (one scrape)."""

    def __init__(self, status: Status) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        st = self.status
        info = InfoMetricFamily("forwardd_build", "forwardd's version.")
        info.add_metric([], {"version": str(st["version"])})
        yield info
        ready = GaugeMetricFamily("forwardd_ready", "1 when /ready answers 200.")
        ready.add_metric([], 1.0 if st["ready"] else 0.0)
        yield ready
        up = GaugeMetricFamily("forwardd_worker_up", "1 for each worker that answered.", labels=["worker"])
        for w in st["workers"]:
            up.add_metric([str(w["worker"])], 1.0 if w["up"] else 0.0)
        yield up
        yield from self._families(SOURCE_METRICS, "source", st["sources"])
        yield _histogram(
            "forwardd_source_ack_latency_seconds",
            "Request read to ack written, for requests that asked for an ack.",
            "source",
            st["sources"],
            "ack_latency",
        )
        yield from self._families(OUTPUT_METRICS, "output", st["outputs"])
        yield _histogram(
            "forwardd_output_delivery_latency_seconds",
            "Chunk received to delivered, per delivered batch.",
            "output",
            st["outputs"],
            "delivery_latency",
        )
        for name, key, doc in ROUTER_METRICS:
            fam = CounterMetricFamily(name, doc)
            fam.add_metric([], _number(st["router"].get(key)))
            yield fam

    @staticmethod
    def _families(
        specs: tuple[tuple[str, str, str, str], ...], label: str, items: dict[str, dict[str, Any]]
    ) -> Iterator[Metric]:
        for kind, name, key, doc in specs:
            fam: Metric
            if kind == "counter":
                fam = CounterMetricFamily(name, doc, labels=[label])
            else:
                fam = GaugeMetricFamily(name, doc, labels=[label])
            for item_name, item in items.items():
                if key in item:
                    fam.add_metric([item_name], _number(item[key]))
            yield fam

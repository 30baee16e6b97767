"""Prometheus metrics of one server, in a registry of its own (two apps in one process stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
POWERS_OF_TWO = tuple(float(2**i) for i in range(17))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fastmarco_requests",
            "HTTP requests answered, by route and status.",
            ["path", "status"],
            registry=r,
        )
        self.queue_depth = Gauge("fastmarco_queue_depth", "Requests waiting for a batch.", registry=r)
        self.inflight = Gauge(
            "fastmarco_inflight_requests", "Embedding and search requests not yet answered.", registry=r
        )
        self.batch_rows = Histogram(
            "fastmarco_batch_rows", "Texts per batch (one encode each).", buckets=POWERS_OF_TWO, registry=r
        )
        self.batch_tokens = Histogram(
            "fastmarco_batch_tokens", "Tokens per batch.", buckets=POWERS_OF_TWO, registry=r
        )
        self.queue_seconds = Histogram(
            "fastmarco_queue_seconds", "Time from enqueue to the batch start.", buckets=SECONDS, registry=r
        )
        self.encode_seconds = Histogram(
            "fastmarco_encode_seconds", "Time to encode one batch.", buckets=SECONDS, registry=r
        )
        self.search_seconds = Histogram(
            "fastmarco_search_seconds", "Time to search one batch.", buckets=SECONDS, registry=r
        )
        self.truncated = Counter(
            "fastmarco_truncated_inputs", "Inputs cut to the model's max_seq_length.", registry=r
        )
        self.dropped = Counter(
            "fastmarco_dropped_requests", "Queued requests whose client disconnected.", registry=r
        )
        self.rejected = Counter(
            "fastmarco_rejected_requests", "Requests refused with 429 because the queue was full.", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

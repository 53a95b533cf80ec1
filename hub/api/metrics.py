"""Prometheus metrics of one API process: requests by interaction, and the feeds' state.

Request counts and latencies are counted where they happen (`hub.api.observe`).
Feed figures are read from the message store when Prometheus scrapes, so any API
process reports those of the whole hub, whichever process or worker did the
work; they are read at most once per `FEED_TTL` seconds, so that scraping many
processes often does not load the database, and a store that does not answer
in time leaves the last figures (and `hub_feed_scrape_errors_total` counts it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hub.ingest.status import STATUSES

log = logging.getLogger("hub.metrics")
FEED_TTL = 5.0
# Request latencies from a cached read (about a millisecond) to a slow search.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class FeedCollector(Collector):
    """Feed messages by status, the broker's queue depth and dead messages, at scrape time."""

    def __init__(
        self,
        counts: Callable[[], Mapping[str, int]],
        backlog: Callable[[], int],
        errors: Counter,
        ttl: float = FEED_TTL,
    ) -> None:
        self.counts = counts
        self.backlog = backlog
        self.errors = errors
        self.ttl = ttl
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._by_status: dict[str, int] = {}
        self._queued = 0

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._read_at < self.ttl:
                return
            try:
                self._by_status = dict(self.counts())
                self._queued = self.backlog()
            except Exception as e:  # the store is down: /readyz says so; keep the last figures
                self.errors.inc()
                log.warning("feed metrics not read: %s", type(e).__name__)
            self._read_at = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        self._refresh()
        by_status = GaugeMetricFamily(
            "hub_feed_messages", "Feed messages in the message store, by status", labels=["status"]
        )
        for name in STATUSES:
            by_status.add_metric([name], self._by_status.get(name, 0))
        yield by_status
        yield GaugeMetricFamily(
            "hub_feed_dead_messages",
            "Feed messages whose transient errors outlasted their attempts (to retry by hand)",
            value=self._by_status.get("dead", 0),
        )
        yield GaugeMetricFamily(
            "hub_feed_queue_depth",
            "Feed message batches waiting for a worker (the broker's queue, or the embedded "
            "thread pool's)",
            value=self._queued,
        )


class Metrics:
    """One process's registry: what `/metrics` answers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hub_requests",
            "HTTP requests answered, by interaction, method and status code",
            ["interaction", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "hub_request_duration_seconds",
            "Time to answer an HTTP request, by interaction",
            ["interaction"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.feeds: FeedCollector | None = None
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.feed_scrape_errors = Counter(
            "hub_feed_scrape_errors",
            "Scrapes that could not read the feed figures from the message store",
            registry=self.registry,
        )

    def watch_feeds(
        self, counts: Callable[[], Mapping[str, int]], backlog: Callable[[], int]
    ) -> None:
        self.feeds = FeedCollector(counts, backlog, self.feed_scrape_errors)
        self.registry.register(self.feeds)

    def observe(self, interaction: str, method: str, status: int, seconds: float) -> None:
        # The labelled children, looked up once per combination (`labels()` costs a few
        # microseconds a call, on every request).
        key = (interaction, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(interaction, method, str(status)),
                self.latency.labels(interaction),
            )
        children[0].inc()
        children[1].observe(seconds)

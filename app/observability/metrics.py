"""Prometheus metrics. Counters and histograms are updated where things happen; the gauges
(queue depth, attachments by state) are read from Redis and Postgres when scraped."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from app.errors import StowageError

REGISTRY = CollectorRegistry(auto_describe=True)

_SIZE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

UPLOADS = Counter("stowage_uploads_total", "Uploads by mode and outcome",
                  ["mode", "outcome"], registry=REGISTRY)
UPLOAD_BYTES = Counter("stowage_upload_bytes_total", "Bytes accepted into the cache",
                       ["mode"], registry=REGISTRY)
UPLOAD_SECONDS = Histogram("stowage_upload_duration_seconds", "Upload request duration",
                           ["mode"], buckets=_SIZE_BUCKETS, registry=REGISTRY)
PROMOTIONS = Counter("stowage_promotions_total", "Promotions by outcome", ["outcome"],
                     registry=REGISTRY)
PROMOTION_SECONDS = Histogram("stowage_promotion_duration_seconds", "Promotion job duration",
                              buckets=_SIZE_BUCKETS, registry=REGISTRY)
PROMOTION_LAG = Histogram("stowage_promotion_lag_seconds",
                          "From upload (created_at) to stored", buckets=_SIZE_BUCKETS,
                          registry=REGISTRY)
DERIVATIVE_SECONDS = Histogram("stowage_derivative_duration_seconds",
                               "Time to render one attachment's derivatives",
                               buckets=_SIZE_BUCKETS, registry=REGISTRY)
SCANS = Counter("stowage_scans_total", "Malware scans by result (clean, infected, too_large,"
                " unavailable)", ["result"], registry=REGISTRY)
SCAN_SECONDS = Histogram("stowage_scan_duration_seconds", "Malware scan duration",
                         buckets=_SIZE_BUCKETS, registry=REGISTRY)
SCAN_BYTES = Counter("stowage_scanned_bytes_total", "Bytes sent to the malware scanner",
                     registry=REGISTRY)
JOBS = Counter("stowage_jobs_total", "Worker jobs by function and outcome",
               ["function", "outcome"], registry=REGISTRY)
WEBHOOK_DELIVERIES = Counter("stowage_webhook_attempts_total",
                             "Webhook delivery attempts by outcome", ["outcome"],
                             registry=REGISTRY)
WEBHOOK_SECONDS = Histogram("stowage_webhook_attempt_duration_seconds",
                            "Webhook attempt duration", buckets=_SIZE_BUCKETS,
                            registry=REGISTRY)
# Gauges read from their source at scrape time: with several API processes
# (PROMETHEUS_MULTIPROC_DIR) the value of the process that served the last scrape is the one
# (livemostrecent); counters and histograms are summed over the processes.
_READ_AT_SCRAPE = "livemostrecent"
QUEUE_DEPTH = Gauge("stowage_queue_depth", "Jobs waiting in the arq queue", registry=REGISTRY,
                    multiprocess_mode=_READ_AT_SCRAPE)
JOBS_IN_PROGRESS = Gauge("stowage_jobs_in_progress", "Jobs running on some worker",
                         registry=REGISTRY, multiprocess_mode=_READ_AT_SCRAPE)
ATTACHMENTS = Gauge("stowage_attachments", "Attachments by state", ["state"],
                    registry=REGISTRY, multiprocess_mode=_READ_AT_SCRAPE)
DELIVERIES = Gauge("stowage_webhook_deliveries", "Webhook deliveries by status", ["status"],
                   registry=REGISTRY, multiprocess_mode=_READ_AT_SCRAPE)
DEPENDENCY_UP = Gauge("stowage_worker_dependency_up",
                      "1 while the worker reaches the dependency, 0 while it does not",
                      ["dependency"], registry=REGISTRY)


def exposition() -> bytes:
    """The text /metrics answers: this process's registry, or, when `stowage serve` runs
    several processes (it sets PROMETHEUS_MULTIPROC_DIR for them), every process's values
    from the shared directory (counters and histograms summed)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def serve_worker_metrics(host: str, first_port: int, ports: int) -> int | None:
    """Serve REGISTRY over HTTP on the first free port from first_port on; the port, or None
    when every port of the range is taken (the caller goes on without metrics)."""
    from prometheus_client import start_http_server

    for port in range(first_port, min(first_port + ports, 65536)):
        try:
            start_http_server(port, addr=host, registry=REGISTRY)
        except OSError:
            continue  # taken: another worker on this host, or another program
        return port
    return None


@contextmanager
def track_upload(mode: str) -> Iterator[list[int]]:
    """Count an upload by outcome (the error's slug when refused) and time it; the caller
    appends the accepted size to the yielded list."""
    accepted: list[int] = []
    started = time.perf_counter()
    outcome = "error"
    try:
        yield accepted
        outcome = "ok"
    except StowageError as e:
        outcome = e.slug
        raise
    finally:
        UPLOADS.labels(mode, outcome).inc()
        UPLOAD_SECONDS.labels(mode).observe(time.perf_counter() - started)
        if accepted:
            UPLOAD_BYTES.labels(mode).inc(sum(accepted))


@contextmanager
def timed(histogram: Histogram, *labels: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        (histogram.labels(*labels) if labels else histogram).observe(
            time.perf_counter() - started)


# tenancy (issue 24)
RATE_LIMIT_UNAVAILABLE = Counter(
    "stowage_rate_limit_unavailable_total",
    "Rate limit checks that could not reach Redis and let the request through (fail open)",
    registry=REGISTRY)
RATE_LIMITED = Counter("stowage_rate_limited_total", "Uploads refused by a rate limit (429)",
                       registry=REGISTRY)
APP_BYTES = Gauge("stowage_app_bytes",
                  "Bytes of an app's live files (per app while there are at most"
                  " STOWAGE_METRICS_MAX_APPS apps, else the top ones and app=\"_other\")",
                  ["app"], registry=REGISTRY, multiprocess_mode=_READ_AT_SCRAPE)
APP_ATTACHMENTS = Gauge("stowage_app_attachments", "An app's live attachments (cached,"
                        " stored); labelled as stowage_app_bytes", ["app"], registry=REGISTRY,
                        multiprocess_mode=_READ_AT_SCRAPE)
APP_QUOTA_BYTES = Gauge("stowage_app_quota_bytes", "An app's storage quota (apps with one;"
                        " labelled as stowage_app_bytes)", ["app"], registry=REGISTRY,
                        multiprocess_mode=_READ_AT_SCRAPE)

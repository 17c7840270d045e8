"""Prometheus metrics, one registry per process, served at `/metrics`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry()

INGEST_EVENTS = Counter(
    "trustledger_ingest_events",
    "Messages taken from the stream, by outcome (appended, duplicate, quarantined).",
    ["outcome"],
    registry=REGISTRY,
)
QUARANTINED = Counter(
    "trustledger_quarantined_events",
    "Messages quarantined, by reason.",
    ["reason"],
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "trustledger_ingest_batch_seconds",
    "Time to admit, chain and commit one batch.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "trustledger_ingest_batch_size",
    "Messages per batch.",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500),
    registry=REGISTRY,
)
INGEST_FAILURES = Counter(
    "trustledger_ingest_batch_failures",
    "Failed attempts to commit a batch (each is retried in place until it commits).",
    registry=REGISTRY,
)
CONSUMER_PENDING = Gauge(
    "trustledger_ingest_lag_messages",
    "Messages in the stream not yet delivered to the ingest consumer (as of the last batch).",
    registry=REGISTRY,
)
INGEST_ACTIVE = Gauge(
    "trustledger_ingest_active",
    "1 while this process is the ingest consumer's single writer, 0 while it waits as a standby.",
    registry=REGISTRY,
)
INGEST_LAST_COMMIT = Gauge(
    "trustledger_ingest_last_commit_timestamp_seconds",
    "Unix time of the last committed batch (alert when it lags while messages are pending).",
    registry=REGISTRY,
)
INGEST_CONSECUTIVE_FAILURES = Gauge(
    "trustledger_ingest_consecutive_failures",
    "Failed attempts (commit, fetch, bind) since the last committed batch.",
    registry=REGISTRY,
)
DELIVERY_GAPS = Counter(
    "trustledger_ingest_delivery_gaps",
    "Deliveries lost in transit (a gap in the consumer sequence); each rebinds the consumer.",
    registry=REGISTRY,
)
CHAIN_VERIFIED_SEQ = Gauge(
    "trustledger_chain_verified_seq",
    "Highest sequence verified by the scheduled chain check, per chain.",
    ["chain"],
    registry=REGISTRY,
)
CHAIN_BROKEN = Gauge(
    "trustledger_chain_broken",
    "1 when the scheduled check found a broken link in the chain, else 0.",
    ["chain"],
    registry=REGISTRY,
)

POSTURES_ASSESSED = Counter(
    "trustledger_postures_assessed_total",
    "Agents re-assessed by the scheduler (evidence changed, or a posture change fell due).",
    registry=REGISTRY,
)

AGENTS_BY_BAND = Gauge(
    "trustledger_agents_by_band",
    "Agents per posture band, as of the scheduler's latest assessment of each.",
    ["band"],
    registry=REGISTRY,
)


def render() -> bytes:
    """The Prometheus text exposition of every metric."""
    return generate_latest(REGISTRY)

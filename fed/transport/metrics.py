"""The channel's figures as Prometheus metrics, through Ray's own metrics API.

Values recorded here go out with the party's Ray metrics (the metrics agent of each
node serves them on its Prometheus port, ``ray start --metrics-export-port``), so
whatever scrapes Ray scrapes the channel too; docs/observability.md lists them. The
transport calls one :class:`ChannelMetrics` per process and job next to its own
counters; the tags of each peer are built once, so a record is one call into Ray's
recorder. Outside a Ray worker or driver (``ray.init`` not run) nothing is recorded.

Tags: ``party`` (this party) and ``peer`` (the other party), or ``reason`` for
refusals. The job is not a tag: a long-lived cluster runs many jobs, and a tag per
job would grow the series without bound.
"""
from __future__ import annotations

from typing import Any

#: Upper bounds (seconds) of the value latency histogram: a small value on loopback
#: takes about a millisecond, a model over a WAN seconds to minutes.
LATENCY_BOUNDS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

#: name -> (kind, description, tag keys); every metric is named ``rayfed_<name>``.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "values_sent": ("counter", "Values this party sent to a peer and the peer acknowledged.", ("party", "peer")),
    "bytes_sent": ("counter", "Wire bytes of the values sent to a peer (payload, once per value).", ("party", "peer")),
    "values_received": ("counter", "Values received from a peer and held for their barriers.", ("party", "peer")),
    "bytes_received": ("counter", "Wire bytes of the values received from a peer.", ("party", "peer")),
    "send_retries": ("counter", "Sends to a peer retried after a broken connection or a busy receiver.",
                     ("party", "peer")),
    "sends_refused": ("counter", "Sends a peer's receiver refused, by the reason it gave.", ("party", "peer", "reason")),
    "refusals": ("counter", "Connections or values this party's receiver refused, by reason.", ("party", "reason")),
    "peers_lost": ("counter", "Times a peer stayed silent past peer_timeout_s (or startup_timeout_s).",
                   ("party", "peer")),
    "value_latency_seconds": ("histogram", ("From a value being ready to send until the peer acknowledged it "
                              "(encoding, streaming, retries)."), ("party", "peer")),
    "barrier_held_bytes": ("gauge", ("Bytes this party's receiver holds for a peer: values arrived and not yet "
                           "claimed by their barriers, and values being received."), ("party", "peer")),
}


#: The reasons a receiver refuses with (fed/transport/session.py); a peer's answer naming
#: anything else is recorded as "other", so a peer cannot grow the series.
REFUSAL_REASONS = frozenset({
    "protocol", "unknown_party", "identity", "job_not_running", "wrong_destination",
    "header_too_large", "deserialization", "too_large", "busy", "spoofed_source", "too_many_frames",
})


class ChannelMetrics:
    """Records the channel's metrics for one party; a no-op outside Ray."""

    def __init__(self, party: str) -> None:
        self._party = party
        self._tags: dict[str, dict[str, str]] = {}
        self._on = _ray_ready()
        if self._on:
            made = {name: _make(name, *spec) for name, spec in METRICS.items()}
            self._values_sent, self._bytes_sent = made["values_sent"], made["bytes_sent"]
            self._values_received, self._bytes_received = made["values_received"], made["bytes_received"]
            self._retries, self._sends_refused = made["send_retries"], made["sends_refused"]
            self._refusals, self._lost = made["refusals"], made["peers_lost"]
            self._latency, self._held = made["value_latency_seconds"], made["barrier_held_bytes"]

    @classmethod
    def off(cls) -> ChannelMetrics:
        """Metrics that record nothing (tests of the transport's parts without Ray)."""
        metrics = cls.__new__(cls)
        metrics._party, metrics._tags, metrics._on = "", {}, False
        return metrics

    def _peer(self, peer: str) -> dict[str, str]:
        tags = self._tags.get(peer)
        if tags is None:
            tags = self._tags[peer] = {"party": self._party, "peer": peer}
        return tags

    def sent(self, peer: str, nbytes: int, seconds: float) -> None:
        if self._on:
            tags = self._peer(peer)
            self._values_sent.inc(1, tags)
            if nbytes > 0:
                self._bytes_sent.inc(nbytes, tags)
            self._latency.observe(seconds, tags)

    def received(self, peer: str, nbytes: int) -> None:
        if self._on:
            tags = self._peer(peer)
            self._values_received.inc(1, tags)
            if nbytes > 0:
                self._bytes_received.inc(nbytes, tags)

    def retried(self, peer: str) -> None:
        if self._on:
            self._retries.inc(1, self._peer(peer))

    def send_refused(self, peer: str, reason: str) -> None:
        if self._on:
            self._sends_refused.inc(1, {"party": self._party, "peer": peer, "reason": _reason(reason)})

    def refused(self, reason: str) -> None:
        if self._on:
            self._refusals.inc(1, {"party": self._party, "reason": _reason(reason)})

    def peer_lost(self, peer: str) -> None:
        if self._on:
            self._lost.inc(1, self._peer(peer))

    def held(self, peer: str, nbytes: int) -> None:
        if self._on:
            self._held.set(nbytes, self._peer(peer))


def _reason(reason: str) -> str:
    return reason if reason in REFUSAL_REASONS else "other"


def _ray_ready() -> bool:
    import ray

    return ray.is_initialized()


def _make(name: str, kind: str, description: str, tag_keys: tuple[str, ...]) -> Any:
    from ray.util import metrics

    full = f"rayfed_{name}"
    if kind == "counter":
        return metrics.Counter(full, description, tag_keys)
    if kind == "gauge":
        return metrics.Gauge(full, description, tag_keys)
    return metrics.Histogram(full, description, list(LATENCY_BOUNDS_S), tag_keys)

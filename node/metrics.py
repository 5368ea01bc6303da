"""Counters and gauges in Prometheus text format, kept in memory (``GET /metrics``)."""

from __future__ import annotations

from collections import defaultdict

HELP = {
    "events_stored_total": "Events stored, by source (local or peer).",
    "events_refused_total": "Events refused, by reason word.",
    "events_pending_total": "Events parked waiting for a predecessor or roster entry.",
    "http_requests_total": "HTTP requests served, by route and status.",
    "requests_refused_total": "Requests refused before their handler, by reason.",
    "peer_lag_events": "Events a peer holds that this node has not pulled yet.",
    "peer_sync_seconds": "Duration of the last sync round with a peer.",
    "peer_connected": "1 while the live stream to a peer is open.",
    "ledger_events": "Events in the ledger.",
    "fork_evidence_total": "Fork evidence peers sent: stored, held already, waiting for "
    "its feed (then stored, held, refused or expired), overflow (not kept: its sender's "
    "waiting room is full), or refused (by reason word).",
}
GAUGES = {"peer_lag_events", "peer_sync_seconds", "peer_connected", "ledger_events"}


class Metrics:
    def __init__(self) -> None:
        self._values: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        series = self._values[name]
        series[key] = series.get(key, 0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self._values[name][tuple(sorted(labels.items()))] = value

    def drop(self, name: str, **labels: str) -> None:
        """Forget one series (a removed peer's: a gauge left at 0 would alert forever)."""
        self._values[name].pop(tuple(sorted(labels.items())), None)

    def get(self, name: str, **labels: str) -> float:
        return self._values[name].get(tuple(sorted(labels.items())), 0)

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted(self._values):
            full = f"podlink_{name}"
            lines.append(f"# HELP {full} {HELP.get(name, name)}")
            lines.append(f"# TYPE {full} {'gauge' if name in GAUGES else 'counter'}")
            for labels, value in sorted(self._values[name].items()):
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.append(f"{full}{{{text}}} {value:g}" if text else f"{full} {value:g}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

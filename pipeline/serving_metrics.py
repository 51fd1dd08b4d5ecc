"""Counters and histograms of the `aeflow api` ingress, rendered in the Prometheus text format (no client library)."""
from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class _Histogram:
    def __init__(self, bounds: tuple):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.n = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.total += v
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, cum = [], 0
        for b, c in zip(list(self.bounds) + ["+Inf"], self.counts):
            cum += c
            out.append(f'{name}_bucket{{{labels},le="{b}"}} {cum}')
        out += [f"{name}_sum{{{labels}}} {self.total:.6f}", f"{name}_count{{{labels}}} {self.n}"]
        return out


class Metrics:
    """Requests and errors by endpoint and status, latency and batch-size histograms by endpoint."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, _Histogram] = {}
        self.batch: dict[str, _Histogram] = {}

    def observe(self, endpoint: str, status: int, seconds: float, batch: int | None = None) -> None:
        """Count one answered request (batch: how many requests shared its model call)."""
        with self._lock:
            self.requests[(endpoint, status)] += 1
            self.latency.setdefault(endpoint, _Histogram(LATENCY_BUCKETS)).observe(seconds)
            if batch:
                self.batch.setdefault(endpoint, _Histogram(BATCH_BUCKETS)).observe(batch)

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        with self._lock:
            lines = ["# HELP aeflow_requests_total HTTP requests answered, by endpoint and status code.",
                     "# TYPE aeflow_requests_total counter"]
            lines += [f'aeflow_requests_total{{endpoint="{e}",code="{c}"}} {n}'
                      for (e, c), n in sorted(self.requests.items())]
            errors: dict[str, int] = defaultdict(int)
            for (e, c), n in self.requests.items():
                if c >= 400:
                    errors[e] += n
            lines += ["# HELP aeflow_request_errors_total Requests answered with a 4xx or 5xx status.",
                      "# TYPE aeflow_request_errors_total counter"]
            lines += [f'aeflow_request_errors_total{{endpoint="{e}"}} {n}' for e, n in sorted(errors.items())]
            lines += ["# HELP aeflow_request_seconds Time from request to response in the ingress.",
                      "# TYPE aeflow_request_seconds histogram"]
            for e, h in sorted(self.latency.items()):
                lines += h.lines("aeflow_request_seconds", f'endpoint="{e}"')
            lines += ["# HELP aeflow_batch_size Requests that shared one model call (serve.batch) with this one.",
                      "# TYPE aeflow_batch_size histogram"]
            for e, h in sorted(self.batch.items()):
                lines += h.lines("aeflow_batch_size", f'endpoint="{e}"')
        return "\n".join(lines) + "\n"

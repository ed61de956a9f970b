"""The server's self-measurement: cheap log-bucketed histograms and the metrics document."""

from __future__ import annotations

import math
import os
import resource
import threading
import time
from typing import Any

from torc_stress import __version__

_BUCKETS_PER_DOUBLING = 8
_MIN_MS = 0.001


class Histogram:
    """Log-bucketed histogram of millisecond values (about 9% relative error, bounded memory)."""

    __slots__ = ("count", "sum", "max", "_buckets")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.max = 0.0
        self._buckets: dict[int, int] = {}

    def add(self, value: float) -> None:
        """Records one value."""
        self.count += 1
        self.sum += value
        if value > self.max:
            self.max = value
        index = (
            0 if value <= _MIN_MS else int(math.log2(value / _MIN_MS) * _BUCKETS_PER_DOUBLING) + 1
        )
        self._buckets[index] = self._buckets.get(index, 0) + 1

    def quantile(self, q: float) -> float:
        """Returns the upper bound of the bucket holding quantile ``q`` (capped at the max)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                upper = _MIN_MS * 2 ** (index / _BUCKETS_PER_DOUBLING) if index else _MIN_MS
                return min(upper, self.max)
        return self.max

    def summary(self) -> dict[str, float]:
        """Returns ``{count, sum, p50, p90, p99, max}``."""
        return {
            "count": self.count,
            "sum": round(self.sum, 3),
            "p50": round(self.quantile(0.5), 3),
            "p90": round(self.quantile(0.9), 3),
            "p99": round(self.quantile(0.99), 3),
            "max": round(self.max, 3),
        }


class OpStats:
    """Write-path figures for one op kind."""

    __slots__ = ("count", "busy_retries", "wait_ms", "hold_ms")

    def __init__(self) -> None:
        self.count = 0
        self.busy_retries = 0
        self.wait_ms = Histogram()
        self.hold_ms = Histogram()


class RequestStats:
    """Latency and error count of one route template."""

    __slots__ = ("count", "errors", "latency_ms")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.latency_ms = Histogram()

    def record(self, latency_ms: float, error: bool) -> None:
        """Records one request (on the event loop thread)."""
        self.count += 1
        if error:
            self.errors += 1
        self.latency_ms.add(latency_ms)


class Metrics:
    """Everything the server measures about itself; see the metrics document in internals.md."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.lock = threading.Lock()
        self.ops: dict[str, OpStats] = {}
        self.tx_count = 0
        self.tx_ops = 0
        self.tx_batch = Histogram()
        self.tx_hold = Histogram()
        self.unblock_passes = 0
        self.unblock_completions = 0
        self.unblock_ready = 0
        self.unblock_canceled = 0
        self.unblock_batch = Histogram()
        self.unblock_duration = Histogram()
        self.unblock_hop = Histogram()
        self.requests: dict[str, RequestStats] = {}
        self.lock_errors = 0
        self.checkpoints = 0
        self.checkpoint_frames = 0
        self.checkpoint_ms = Histogram()
        self.lease_s = 0.0
        self.leases_expired = 0
        self.leases_requeued = 0

    def op(self, kind: str) -> OpStats:
        """Returns (creating) the stats of one op kind; call with :attr:`lock` held."""
        stats = self.ops.get(kind)
        if stats is None:
            stats = self.ops[kind] = OpStats()
        return stats

    def request_stats(self, route: str) -> RequestStats:
        """Returns (creating) the stats of one route template; hot paths keep the object."""
        stats = self.requests.get(route)
        if stats is None:
            with self.lock:
                stats = self.requests.setdefault(route, RequestStats())
        return stats

    def record_request(self, route: str, latency_ms: float, error: bool) -> None:
        """Records one HTTP request (called on the event loop thread)."""
        self.request_stats(route).record(latency_ms, error)

    def document(self) -> dict[str, Any]:
        """Builds the metrics document (schema 1)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with self.lock:
            write_path = {
                kind: {
                    "count": s.count,
                    "busy_retries": s.busy_retries,
                    "wait_ms": s.wait_ms.summary(),
                    "hold_ms": s.hold_ms.summary(),
                }
                for kind, s in sorted(self.ops.items())
            }
            transactions = {
                "count": self.tx_count,
                "ops": self.tx_ops,
                "batch_size": self.tx_batch.summary(),
                "hold_ms": self.tx_hold.summary(),
            }
            unblock = {
                "passes": self.unblock_passes,
                "completions": self.unblock_completions,
                "ready": self.unblock_ready,
                "canceled": self.unblock_canceled,
                "batch_size": self.unblock_batch.summary(),
                "duration_ms": self.unblock_duration.summary(),
                "hop_ms": self.unblock_hop.summary(),
            }
            lock_errors = self.lock_errors
            leases = {
                "lease_s": self.lease_s,
                "expired_nodes": self.leases_expired,
                "requeued_jobs": self.leases_requeued,
            }
            checkpoints = {
                "count": self.checkpoints,
                "frames": self.checkpoint_frames,
                "duration_ms": self.checkpoint_ms.summary(),
            }
        requests = {
            route: {"count": s.count, "errors": s.errors, "latency_ms": s.latency_ms.summary()}
            for route, s in sorted(list(self.requests.items()))
            if s.count
        }
        return {
            "schema": 1,
            "server": {
                "version": __version__,
                "pid": os.getpid(),
                "started_at": round(self.started_at, 3),
                "uptime_s": round(time.time() - self.started_at, 3),
                "cpu_user_s": round(usage.ru_utime, 3),
                "cpu_system_s": round(usage.ru_stime, 3),
                "rss_bytes": _current_rss_bytes(),
                "peak_rss_bytes": usage.ru_maxrss * 1024,
            },
            "write_path": write_path,
            "transactions": transactions,
            "unblock": unblock,
            "checkpoints": checkpoints,
            "leases": leases,
            "requests": requests,
            "lock_errors": lock_errors,
        }


def _current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

"""``dpack serve``'s operational figures: counters and latencies, the Prometheus text endpoint, the
periodic summary line, and a rate-limited logger for what peers send."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import one_line

log = logging.getLogger("dpack.serve")


class RateLimitedLog:
    """At most one line per ``key`` every ``every`` seconds, with the count of what was held back. Keys
    come from dpack's code (a fixed vocabulary), never from what a peer sends; every argument but a
    number is written with ``one_line``."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.last: dict[str, tuple[float, int]] = {}

    def __call__(self, level: int, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        t, held = self.last.get(key, (-1e9, 0))
        if now - t >= self.every:
            suffix = f" (+{held} more like it)" if held else ""
            clean = tuple(a if isinstance(a, int | float) else one_line(a) for a in args)
            log.log(level, msg + suffix, *clean)
            self.last[key] = (now, 0)
        else:
            self.last[key] = (t, held + 1)


class Metrics:
    """Operational counters, exported in Prometheus text format and summarised in a periodic log line."""

    EXTRA_GAUGES = frozenset({"rules_active", "rules_sources_tracked", "learning_state"})  # levels
    COUNTERS = {
        "messages_received": "WebSocket messages received from Zeek",
        "messages_malformed": "messages that did not decode or did not fit the contract",
        "zeek_errors": "error replies from Zeek (a message of ours it could not use)",
        "batches_refused": "batches refused (contract version or prefix mismatch)",
        "flows_received": "flow samples accepted into the queue",
        "samples_skipped": "samples left out of a batch because they were malformed",
        "flows_dropped": "flow samples dropped: the queue was full, or their batch was over the frame cap",
        "frames_too_large": "batches over the frame cap, dropped unparsed (their flows counted as dropped)",
        "flows_scored": "flows scored",
        "flows_flagged": "flows scored as anomalous",
        "inputs_from_cache": "distinct flow inputs whose score and explanation came from the scorer's cache",
        "flows_ignored": "flow samples ignored because detectors.prefix is off",
        "connections_received": "connection summaries accepted for the record detectors",
        "connections_skipped": "connection summaries left out of a batch because they were malformed",
        "connections_ignored": "connection summaries ignored (no record detector configured, or stopping)",
        "connections_dropped": "connection summaries dropped because the scoring worker was behind",
        "connections_scored": "connection summaries scored",
        "connections_flagged": "connection summaries scored as anomalous",
        "verdicts_sent": "verdicts sent back to Zeek",
        "verdicts_dropped": "verdicts dropped because the outbox was full while Zeek was away",
        "alerts_written": "records written to the SIEM feed",
        "alert_write_errors": "failed writes to the SIEM feed",
        "hook_errors": "exceptions raised by anomaly hooks (rule writers)",
        "reconnects": "connections made to Zeek",
        "model_reloads": "models swapped in while serving",
        "model_reload_failures": "new model files refused (the old model kept serving)",
        "config_reloads": "changed config files applied while serving",
        "config_reload_failures": "changed config files refused",
        "drift_alarms": "services whose unflagged scores drifted from the model's baseline (DPack::Model_Drift)",
        "guard_engaged": "times the day-one guard held notices, SIEM alerts and rules (the model flags most hosts)",
        "worker_restarts": "scoring workers that ended unexpectedly (restarted; their queued flows counted as dropped)",
    }

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(self.COUNTERS, 0)
        self.latency: deque[float] = deque(maxlen=20_000)  # seconds, receipt -> verdict sent
        self.queue_depth = 0
        self.outbox_depth = 0
        self.connected = 0
        self.guard_active = 0  # scoring processes whose day-one guard holds notices and rules
        self.extra: Callable[[], dict[str, int]] = dict  # more counters (the rules worker's)

    def inc(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def percentiles(self) -> tuple[float, float, float]:
        with self.lock:
            lat = np.array(self.latency) if self.latency else np.zeros(1)
        p50, p99, pmax = np.percentile(lat, [50, 99, 100])
        return float(p50), float(p99), float(pmax)

    def prometheus(self) -> str:
        lines = []
        with self.lock:
            c = dict(self.counts)
        for name, help_ in self.COUNTERS.items():
            lines += [
                f"# HELP dpack_{name}_total {help_}",
                f"# TYPE dpack_{name}_total counter",
                f"dpack_{name}_total {c[name]}",
            ]
        for name, value in self.extra().items():
            if name in self.EXTRA_GAUGES:
                lines += [f"# TYPE dpack_{name} gauge", f"dpack_{name} {value}"]
            else:
                lines += [f"# TYPE dpack_{name}_total counter", f"dpack_{name}_total {value}"]
        for name, value, help_ in (
            ("queue_depth", self.queue_depth, "flow samples waiting to be scored"),
            ("outbox_depth", self.outbox_depth, "verdicts waiting for a Zeek connection"),
            ("connected", self.connected, "1 while connected to Zeek"),
            (
                "guard_active",
                self.guard_active,
                "scoring processes whose day-one guard holds notices and rules",
            ),
        ):
            lines += [f"# HELP dpack_{name} {help_}", f"# TYPE dpack_{name} gauge", f"dpack_{name} {value}"]
        p50, p99, pmax = self.percentiles()
        lines += [
            "# HELP dpack_verdict_latency_seconds receipt of a sample to its verdict being sent",
            "# TYPE dpack_verdict_latency_seconds summary",
            f'dpack_verdict_latency_seconds{{quantile="0.5"}} {p50:.6f}',
            f'dpack_verdict_latency_seconds{{quantile="0.99"}} {p99:.6f}',
            f'dpack_verdict_latency_seconds{{quantile="1"}} {pmax:.6f}',
        ]
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        p50, p99, _ = self.percentiles()
        c = self.counts
        return (
            f"scored={c['flows_scored']} flagged={c['flows_flagged']} dropped={c['flows_dropped']} "
            f"malformed={c['messages_malformed']} skipped={c['samples_skipped']} "
            f"refused={c['batches_refused']} queue={self.queue_depth} outbox={self.outbox_depth} "
            f"connected={self.connected} latency_p50={p50 * 1e3:.2f}ms p99={p99 * 1e3:.2f}ms"
        )


async def serve_metrics(metrics: Metrics, host: str, port: int) -> asyncio.base_events.Server:
    """A minimal HTTP endpoint for Prometheus: ``GET /metrics`` (anything else: 404)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
                pass
            ok = line.split(b" ")[1:2] == [b"/metrics"]
            body = metrics.prometheus().encode() if ok else b"not found\n"
            status = b"200 OK" if ok else b"404 Not Found"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)

"""``dpack serve``: the live scorer between Zeek and the verdict sinks.

Data path: link (WebSocket) -> ``codec.parse_samples`` -> bounded queue -> micro-batches (``batch_size``
flows or ``max_delay_ms`` after the first, whichever comes first) -> ``Scorer`` on the event loop
(receiving catches up between batches) -> verdict events back to each batch's reply topic, the SIEM
feed, and the anomaly hooks (Suricata rules).

Nothing a peer sends can stop the service: undecodable frames, wrong events, bad samples and refused
batches are counted and logged (rate-limited). Flows that do not fit the queue are dropped and counted;
verdicts that cannot be sent while Zeek is away wait in a bounded outbox and go out after reconnecting.
On SIGTERM the queue is scored and sent before the link closes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config, load_config
from ..errors import CodecError, DpackError, ModelError
from ..prefix.modelfile import LoadedModel, load_model
from ..prefix.scorer import Scorer
from ..records.detectors import RecordScorer
from ..sinks.siem import AlertFeed
from ..traffic.flows import FlowSample
from ..verdict import Verdict
from ..zeek import contract as C
from ..zeek.codec import (
    ConnectionBatch,
    ContractMismatch,
    SampleBatch,
    encode_refusal,
    encode_verdicts,
    parse_connections,
    parse_samples,
)
from ..zeek.wire import Ack, ErrorReply, Event, decode_message

log = logging.getLogger(__name__)

AnomalyHook = Callable[[Sequence[Verdict], Sequence[str]], None]


class RateLimitedLog:
    """At most one line per ``key`` every ``every`` seconds, with the count of what was held back."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.last: dict[str, tuple[float, int]] = {}

    def __call__(self, level: int, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        t, held = self.last.get(key, (-1e9, 0))
        if now - t >= self.every:
            suffix = f" (+{held} more like it)" if held else ""
            log.log(level, msg + suffix, *args)
            self.last[key] = (now, 0)
        else:
            self.last[key] = (t, held + 1)
        if len(self.last) > 1000:
            self.last.clear()


@dataclass
class Item:
    sample: FlowSample
    reply_topic: str
    node: str
    sent: float  # batch header time (Zeek's wall clock)
    received: float  # our monotonic clock


class Metrics:
    """Operational counters, exported in Prometheus text format and summarised in a periodic log line."""

    COUNTERS = {
        "messages_received": "WebSocket messages received from Zeek",
        "messages_malformed": "messages that did not decode or did not fit the contract",
        "zeek_errors": "error replies from Zeek (a message of ours it could not use)",
        "batches_refused": "batches refused (contract version or prefix mismatch)",
        "flows_received": "flow samples accepted into the queue",
        "samples_skipped": "samples left out of a batch because they were malformed",
        "flows_dropped": "flow samples dropped because the queue was full",
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
        "config_reload_failures": "changed config files refused",
        "worker_restarts": "scoring workers that ended unexpectedly (restarted; their queued flows counted as dropped)",
    }

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.c = dict.fromkeys(self.COUNTERS, 0)
        self.latency: deque[float] = deque(maxlen=20_000)  # seconds, receipt -> verdict sent
        self.queue_depth = 0
        self.outbox_depth = 0
        self.connected = 0
        self.extra: Callable[[], dict[str, int]] = dict  # more counters (the rules worker's)

    def inc(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.c[name] += n

    def percentiles(self) -> tuple[float, float, float]:
        with self.lock:
            lat = np.array(self.latency) if self.latency else np.zeros(1)
        p50, p99, pmax = np.percentile(lat, [50, 99, 100])
        return float(p50), float(p99), float(pmax)

    def prometheus(self) -> str:
        lines = []
        with self.lock:
            c = dict(self.c)
        for name, help_ in self.COUNTERS.items():
            lines += [f"# HELP dpack_{name}_total {help_}", f"# TYPE dpack_{name}_total counter",
                      f"dpack_{name}_total {c[name]}"]  # fmt: skip
        for name, value in self.extra().items():
            lines += [f"# TYPE dpack_{name}_total counter", f"dpack_{name}_total {value}"]
        for name, value, help_ in (
            ("queue_depth", self.queue_depth, "flow samples waiting to be scored"),
            ("outbox_depth", self.outbox_depth, "verdicts waiting for a Zeek connection"),
            ("connected", self.connected, "1 while connected to Zeek"),
        ):
            lines += [f"# HELP dpack_{name} {help_}", f"# TYPE dpack_{name} gauge", f"dpack_{name} {value}"]
        p50, p99, pmax = self.percentiles()
        lines += ["# HELP dpack_verdict_latency_seconds receipt of a sample to its verdict being sent",
                  "# TYPE dpack_verdict_latency_seconds summary",
                  f'dpack_verdict_latency_seconds{{quantile="0.5"}} {p50:.6f}',
                  f'dpack_verdict_latency_seconds{{quantile="0.99"}} {p99:.6f}',
                  f'dpack_verdict_latency_seconds{{quantile="1"}} {pmax:.6f}']  # fmt: skip
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        p50, p99, _ = self.percentiles()
        c = self.c
        return (f"scored={c['flows_scored']} flagged={c['flows_flagged']} dropped={c['flows_dropped']} "
                f"malformed={c['messages_malformed']} skipped={c['samples_skipped']} "
                f"refused={c['batches_refused']} queue={self.queue_depth} outbox={self.outbox_depth} "
                f"connected={self.connected} latency_p50={p50 * 1e3:.2f}ms p99={p99 * 1e3:.2f}ms")  # fmt: skip


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
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                         + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)  # fmt: skip
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


class Service:
    """One running ``dpack serve``: owns the model, the queues, the link and the outputs."""

    LOG_SUMMARY = True  # the periodic and the final summary line (a scoring worker leaves them to its parent)

    def __init__(
        self,
        cfg: Config,
        link: Any = None,
        hooks: Sequence[AnomalyHook] = (),
        model: LoadedModel | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.ratelog = RateLimitedLog()
        self.model = model if model is not None else self._load_model(cfg)
        self.scorer = self._scorer(self.model)
        self.record_scorer = RecordScorer.load(cfg.detectors.records_model, cfg.detectors.classifier_model)
        self.hooks = list(hooks)
        self.rules_worker = self._rules_worker(cfg)
        if self.rules_worker is not None:
            self.hooks.append(self.rules_worker)
            self.metrics.extra = lambda: dict(self.rules_worker.counts)
        self.feed = AlertFeed(cfg.serve.alerts, cfg.serve.alerts_all) if cfg.serve.alerts else None
        self.queue: deque[Item] = deque()
        self.outbox: deque[str] = deque()
        self.outbox_verdicts: deque[int] = deque()  # verdicts per outbox message
        self.refusals_sent: set[tuple[str, str]] = set()
        if link is None:
            from ..zeek.link import BrokerLink, WebSocketLink

            kind = BrokerLink if cfg.zeek.transport == "broker" else WebSocketLink
            link = kind(cfg.zeek.url, cfg.zeek.topic, cfg.zeek.reconnect_max, self._on_link)
        self.link = link
        self.stop = asyncio.Event()  # set by SIGTERM: stop taking samples, drain, then close the link
        self.link_stop = asyncio.Event()
        self.wakeup = asyncio.Event()
        self.reload_requested: set[str] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.flush_lock = asyncio.Lock()  # one outbox flush at a time (else a message could go out twice)
        self.pool: Any = None  # workers.WorkerPool while serve.workers > 0

    @staticmethod
    def _rules_worker(cfg: Config) -> Any:
        """Suricata rules for anomalous verdicts, when ``rules.file`` is configured."""
        if not cfg.rules.get("file"):
            return None
        from ..sinks.rules import RulesWorker, book_from_config
        from ..sinks.suricata import SuricataSocket

        book = book_from_config(cfg)
        sock = SuricataSocket(cfg.rules["socket"]) if cfg.rules.get("socket") else None
        return RulesWorker(book, sock, tick=float(cfg.rules.get("tick", 30.0)))

    # --- model -------------------------------------------------------------------------------------------

    def _scorer(self, model: LoadedModel) -> Scorer:
        sc = self.cfg.scoring
        return Scorer(model, explain=sc.explain, top_k=sc.top_k, cache_size=sc.cache_size)

    @staticmethod
    def _load_model(cfg: Config) -> LoadedModel:
        expect = cfg.export.spec() if cfg.export is not None else None
        return load_model(cfg.model_path(), expect=expect)

    def reload_model(self) -> bool:
        """Swap in the model file at the configured path; a bad file is refused and the old one kept."""
        try:
            model = self._load_model(self.cfg)
        except ModelError as err:
            self.metrics.inc("model_reload_failures")
            log.error("new model refused, still serving %s: %s", self.model.name, err)
            return False
        if model.sha256 == self.model.sha256:
            return False
        if model.spec != self.model.spec:
            log.warning("new model %s reads %s, the old one read %s; Zeek's export must match it",
                        model.name, model.spec, self.model.spec)  # fmt: skip
        self.use_model(model)
        self.metrics.inc("model_reloads")
        log.info("now serving model %s (threshold %.6g)", model.name, model.threshold)
        return True

    def use_model(self, model: LoadedModel) -> None:
        """Score the next batches with ``model`` (checked already); the scoring workers too."""
        self.model = model
        self.scorer = self._scorer(model)
        if self.pool is not None:
            self.pool.broadcast(("model", model))

    def reload_config(self) -> None:
        if not self.cfg.path:
            return
        try:
            new = load_config(self.cfg.path)
        except DpackError as err:
            self.metrics.inc("config_reload_failures")
            log.error("changed config refused, keeping the running one: %s", err)
            return
        model_changed = new.model_path() != self.cfg.model_path()
        self.apply_config(new)
        log.info("config reloaded from %s", self.cfg.path)
        if model_changed:
            self.reload_model()

    def apply_config(self, new: Config) -> None:
        """What can change while serving: scoring and batching settings and the model path; the link, the
        queues, the workers and the outputs keep their start-up settings until a restart."""
        rescore = new.scoring != self.cfg.scoring
        self.cfg.scoring, self.cfg.export = new.scoring, new.export
        self.cfg.serve.batch_size, self.cfg.serve.max_delay_ms = new.serve.batch_size, new.serve.max_delay_ms
        self.cfg.model = new.model
        if rescore:  # explain, top_k, cache_size: a scorer with the new settings (and an empty cache)
            self.scorer = self._scorer(self.model)
        if self.pool is not None:
            self.pool.broadcast(("config", new))

    # --- receiving ---------------------------------------------------------------------------------------

    def _on_link(self, up: bool) -> None:
        self.metrics.connected = int(up)
        if up:
            self.metrics.inc("reconnects")
            self.refusals_sent.clear()
            self.wakeup.set()  # flush the outbox
            if self.pool is not None:
                self.pool.broadcast(("link", True))

    async def on_message(
        self, raw: str | bytes | dict[str, Any] | Event | CodecError, received: float | None = None
    ) -> None:
        """One message from the link: WebSocket text (or, in a scoring worker, a parsed part of one), or
        (native Broker) an already converted ``Event`` or the ``CodecError`` that converting it raised.
        ``received``: when it arrived (monotonic clock; default now), for the latency figures - a scoring
        worker is handed its parent's time of receipt."""
        self.metrics.inc("messages_received")
        if self.pool is not None:
            self.pool.forward(raw, time.monotonic())
            return
        try:
            if isinstance(raw, CodecError):
                raise raw
            msg = decode_message(raw)
            if isinstance(msg, ErrorReply):
                self.metrics.inc("zeek_errors")
                self.ratelog(logging.ERROR, "zeek-error", "Zeek could not use a message of ours: %s (%s)",
                             msg.code, msg.context)  # fmt: skip
                return
            if isinstance(msg, Ack):
                return
            if msg.name == C.CONNECTIONS_EVENT:
                conns = parse_connections(msg)
                await self._accept_connections(conns)
                return
            batch = parse_samples(msg)  # refuses any other event with a reason
        except ContractMismatch as err:
            await self._refuse(err.reply_topic, self._version_reason(err))
            return
        except CodecError as err:
            self.metrics.inc("messages_malformed")
            self.ratelog(logging.WARNING, "malformed", "message from Zeek skipped: %s", err)
            return
        if not self.cfg.detectors.prefix:
            self.metrics.inc("flows_ignored", len(batch.samples))
            return
        await self._accept(batch, time.monotonic() if received is None else received)

    async def _refuse(self, topic: str, reason: str) -> None:
        self.metrics.inc("batches_refused")
        self.ratelog(logging.ERROR, "refuse:" + reason, "batch refused: %s", reason)
        await self.send_refusal(topic, reason)

    async def send_refusal(self, topic: str, reason: str) -> None:
        """Tell Zeek why its batches are refused: once per topic and reason while connected."""
        key = (topic, reason)
        if key not in self.refusals_sent and _valid_topic(topic):
            self.refusals_sent.add(key)
            await self.link.send(encode_refusal(topic, reason))

    async def _accept_connections(self, batch: ConnectionBatch) -> None:
        """Connection summaries: scored at once by the record detectors (they are cheap, and Zeek batches
        them), then delivered like flow verdicts."""
        h = batch.header
        if batch.skipped:
            self.metrics.inc("connections_skipped", len(batch.skipped))
            self.ratelog(logging.WARNING, "conn", "%d malformed connection summar(ies) skipped, e.g.: %s",
                         len(batch.skipped), batch.skipped[0])  # fmt: skip
        if h.version != C.CONTRACT_VERSION:
            await self._refuse(h.reply_topic, self._version_reason(h))
            return
        scorer = self.record_scorer
        if scorer is None or self.stop.is_set() or not _valid_topic(h.reply_topic):
            self.metrics.inc("connections_ignored", len(batch.records))
            if scorer is None:
                self.ratelog(logging.WARNING, "no-records", "connection summaries arrive but no record "
                             "detector is configured (detectors.records_model / classifier_model)")  # fmt: skip
            return
        now = time.monotonic()
        self.metrics.inc("connections_received", len(batch.records))
        verdicts = await asyncio.to_thread(scorer.verdicts, batch.records)
        self.metrics.inc("connections_scored", len(verdicts))
        self.metrics.inc("connections_flagged", sum(v.anomalous for v in verdicts))
        n = len(verdicts)
        await self._deliver(verdicts, [h.reply_topic] * n, [h.node] * n, [h.sent] * n, [now] * n)

    @staticmethod
    def _version_reason(h: Any) -> str:
        return (f"contract version {h.version} from node {h.node}, dpack speaks {C.CONTRACT_VERSION}; "
                "update the dpack Zeek package or dpack")  # fmt: skip

    def _refusal(self, batch: SampleBatch) -> str | None:
        h, spec = batch.header, self.model.spec
        if h.version != C.CONTRACT_VERSION:
            return self._version_reason(h)
        if (h.policy, h.packets, h.bytes) != (spec.policy, spec.n_packets, spec.n_bytes) or not math.isclose(
            h.max_wait, spec.max_wait, abs_tol=1e-6
        ):
            return (f"model {self.model.name} expects {spec.describe()}, node {h.node} sends "
                    f"packets={h.packets} bytes={h.bytes} policy={h.policy} max_wait={h.max_wait:g}s; set "
                    "DPack::policy/packets/packet_bytes/max_wait or use a matching model")  # fmt: skip
        return None

    async def _accept(self, batch: SampleBatch, now: float) -> None:
        if self.stop.is_set():
            self.metrics.inc("flows_dropped", len(batch.samples))
            self.ratelog(
                logging.WARNING, "stopping", "stopping: %d flow(s) arrived too late", len(batch.samples)
            )
            return
        if batch.skipped:
            self.metrics.inc("samples_skipped", len(batch.skipped))
            self.ratelog(logging.WARNING, "sample", "%d malformed sample(s) skipped, e.g.: %s",
                         len(batch.skipped), batch.skipped[0])  # fmt: skip
        reason = self._refusal(batch)
        if reason is not None:
            await self._refuse(batch.header.reply_topic, reason)
            return
        topic = batch.header.reply_topic
        if not _valid_topic(topic):
            self.metrics.inc("messages_malformed")
            self.ratelog(logging.WARNING, "topic", "batch with an unusable reply topic skipped")
            return
        room = self.cfg.serve.queue_size - len(self.queue)
        take = batch.samples[: max(room, 0)]
        if len(take) < len(batch.samples):
            n = len(batch.samples) - len(take)
            self.metrics.inc("flows_dropped", n)
            self.ratelog(logging.WARNING, "drop", "queue full (%d flows): %d flow(s) dropped",
                         self.cfg.serve.queue_size, n)  # fmt: skip
        h = batch.header
        self.queue.extend(Item(s, topic, h.node, h.sent, now) for s in take)
        self.metrics.inc("flows_received", len(take))
        self.metrics.queue_depth = len(self.queue)
        if take:
            self.wakeup.set()

    # --- scoring and sending ------------------------------------------------------------------------------

    async def _next_batch(self) -> list[Item]:
        """Wait for flows; return up to batch_size of them once full or max_delay after the first."""
        while not self.queue:
            self.wakeup.clear()
            if self.outbox and self.link.connected:
                return []
            if self.stop.is_set():
                return []
            await self.wakeup.wait()
        first = self.queue[0].received
        size = self.cfg.serve.batch_size
        deadline = first + self.cfg.serve.max_delay_ms / 1000.0
        while len(self.queue) < size and not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout=left)
            except TimeoutError:
                break
        n = min(size, len(self.queue))
        items = [self.queue.popleft() for _ in range(n)]
        self.metrics.queue_depth = len(self.queue)
        return items

    async def _score(self, items: list[Item]) -> None:
        scorer = self.scorer  # a reload swaps self.scorer; this batch finishes with the one it started
        # Scored right here on the event loop, then the receiving loop catches up on what arrived
        # meanwhile. A worker thread (used before) cost more than it saved: GIL hand-overs with the
        # receiving loop slowed every batch (bench_live at 5,000 flows/s: p99 28 -> 9 ms, sustained
        # 10.6-12.4k -> 12.5-13.5k flows/s); receiving between batches keeps a backlog in our bounded
        # queue, where drops are counted, rather than in the socket.
        hits = scorer.cache_hits
        verdicts = scorer.verdicts([it.sample for it in items])
        self.metrics.inc("inputs_from_cache", scorer.cache_hits - hits)
        await self._catch_up()
        self.metrics.inc("flows_scored", len(verdicts))
        self.metrics.inc("flows_flagged", sum(v.anomalous for v in verdicts))
        await self._deliver(verdicts, [it.reply_topic for it in items], [it.node for it in items],
                            [it.sent for it in items], [it.received for it in items])  # fmt: skip

    async def _catch_up(self) -> None:
        """After a batch: let the receiving loop take in what arrived while it was scored (it takes
        every buffered message in one turn), so that a backlog shows in our queue (scored in the next,
        fuller batch, or dropped and counted when the queue is full) instead of waiting in the socket.
        Bounded: stops after two quiet turns, when a batch is full, or after 256 turns."""
        c, idle = self.metrics.c, 0
        for _ in range(256):
            before = c["messages_received"]
            await asyncio.sleep(0)
            idle = idle + 1 if c["messages_received"] == before else 0
            # two quiet turns: the first may only have read the socket and woken the receiving task
            if idle >= 2 or len(self.queue) >= self.cfg.serve.batch_size:
                return

    async def _deliver(self, verdicts: Sequence[Verdict], topics: Sequence[str], nodes: Sequence[str],
                       sent: Sequence[float], received: Sequence[float]) -> None:  # fmt: skip
        """Verdicts to Zeek (grouped by reply topic), the SIEM feed and the anomaly hooks (rules)."""
        now_m = time.monotonic()
        by_topic: dict[str, list[int]] = {}
        for i, topic in enumerate(topics):
            by_topic.setdefault(topic, []).append(i)
        for topic, idx in by_topic.items():
            text = encode_verdicts(topic, [verdicts[i] for i in idx], [sent[i] for i in idx],
                                   [now_m - received[i] for i in idx])  # fmt: skip
            self._post(text, len(idx))
        await self._flush_outbox()
        done = time.monotonic()
        with self.metrics.lock:
            self.metrics.latency.extend(done - r for r in received)
        if self.feed is not None:
            try:
                self.metrics.inc("alerts_written", self.feed.write(verdicts, nodes, time.time()))
            except OSError as err:
                self.metrics.inc("alert_write_errors")
                self.ratelog(logging.ERROR, "feed", "SIEM feed %s not written: %s", self.feed.path, err)
        flagged = [i for i, v in enumerate(verdicts) if v.anomalous]
        if flagged:
            self.run_hooks([verdicts[i] for i in flagged], [nodes[i] for i in flagged])

    def run_hooks(self, verdicts: Sequence[Verdict], nodes: Sequence[str]) -> None:
        """Anomalous verdicts to the anomaly hooks (the rule writer); a failing hook is counted, logged."""
        for hook in self.hooks:
            try:
                hook(verdicts, nodes)
            except Exception:  # noqa: BLE001 - a rule writer must not take the scorer down
                self.metrics.inc("hook_errors")
                log.exception("anomaly hook %r failed", hook)

    def _post(self, text: str, n: int) -> None:
        self.outbox.append(text)
        self.outbox_verdicts.append(n)
        while sum(self.outbox_verdicts) > self.cfg.serve.outbox_size and len(self.outbox) > 1:
            self.outbox.popleft()
            lost = self.outbox_verdicts.popleft()
            self.metrics.inc("verdicts_dropped", lost)
            self.ratelog(logging.ERROR, "outbox", "Zeek away too long: %d verdict(s) not delivered", lost)
        self.metrics.outbox_depth = sum(self.outbox_verdicts)

    async def _flush_outbox(self) -> None:
        async with self.flush_lock:  # two flushes sending outbox[0] while one awaits would send it twice
            while self.outbox and self.link.connected:
                if not await self.link.send(self.outbox[0]):
                    break
                self.outbox.popleft()
                self.metrics.inc("verdicts_sent", self.outbox_verdicts.popleft())
            self.metrics.outbox_depth = sum(self.outbox_verdicts)

    async def _score_loop(self) -> None:
        while True:
            items = await self._next_batch()
            if items:
                await self._score(items)
            elif self.outbox and self.link.connected:
                before = len(self.outbox)
                await self._flush_outbox()
                if len(self.outbox) == before:
                    await asyncio.sleep(0.05)  # the link is going down; wait for it to say so
            if self.stop.is_set() and not self.queue:
                await self._flush_outbox()
                return

    # --- housekeeping -------------------------------------------------------------------------------------

    async def _log_loop(self) -> None:
        while self.LOG_SUMMARY and not self.stop.is_set():
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=self.cfg.serve.log_interval)
            except TimeoutError:
                log.info("%s", self.metrics.summary())

    def _watch(self) -> Any:
        """Watch the model file and the config file; reloads run on the event loop, debounced."""
        if not self.cfg.serve.watch:
            return None
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        targets = {os.path.realpath(self.model.path): "model"}
        if self.cfg.path:
            targets[os.path.realpath(self.cfg.path)] = "config"
        loop = self.loop
        assert loop is not None
        service = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                for p in (event.src_path, getattr(event, "dest_path", "")):
                    kind = targets.get(os.path.realpath(p)) if p else None
                    if kind:
                        loop.call_soon_threadsafe(service._request_reload, kind)

        obs = Observer()
        for d in {str(Path(t).parent) for t in targets}:
            obs.schedule(Handler(), d, recursive=False)
        obs.daemon = True
        obs.start()
        return obs

    def _request_reload(self, kind: str) -> None:
        if not self.reload_requested:
            assert self.loop is not None
            self.loop.call_later(0.3, self._do_reloads)  # debounce: editors write in several steps
        self.reload_requested.add(kind)

    def _do_reloads(self) -> None:
        kinds, self.reload_requested = self.reload_requested, set()
        if "config" in kinds:
            self.reload_config()
        if "model" in kinds:
            self.reload_model()

    async def run(self) -> None:
        """Serve until ``self.stop`` is set; then score and send what is queued, and return."""
        self.loop = asyncio.get_running_loop()
        # Threads that remain (connection-summary scoring, the file watcher) share the GIL with the event
        # loop; the default 5 ms hand-over interval could add up to 5 ms to a verdict. 0.5 ms does not.
        sys.setswitchinterval(0.0005)
        # One torch thread: the other core belongs to the receiving loop (and, on a sensor, to Zeek);
        # two threads measured slower here (bench_live: 9.5-9.8k -> 10.6-12.4k flows/s sustained with
        # this and the freeze below). Freezing what start-up allocated (torch, the model) keeps the
        # garbage collector's full passes from walking it every few hundred batches.
        torch.set_num_threads(1)
        gc.collect()
        gc.freeze()
        metrics_server = None
        if self.cfg.serve.metrics_port:
            metrics_server = await serve_metrics(self.metrics, self.cfg.serve.metrics_address,
                                                 self.cfg.serve.metrics_port)  # fmt: skip
        if self.cfg.serve.workers:
            from .workers import WorkerPool

            self.pool = WorkerPool(self, self.cfg.serve.workers)
            await self.pool.start()  # before the watcher's thread and the link: the workers start clean
        observer = self._watch()
        if self.LOG_SUMMARY:
            log.info("serving model %s (N=%d, L=%d, policy=%s; %s); Zeek at %s", self.model.name,
                     self.model.spec.n_packets, self.model.spec.n_bytes, self.model.spec.policy,
                     f"{self.cfg.serve.workers} scoring workers" if self.pool else "scoring in this process",
                     getattr(self.link, "url", "?"))  # fmt: skip
        link_task = asyncio.create_task(self.link.run(self.on_message, self.link_stop))
        log_task = asyncio.create_task(self._log_loop())
        score_task = asyncio.create_task(self.pool.run() if self.pool else self._score_loop())
        stopper = asyncio.create_task(self.stop.wait())
        try:
            done, _ = await asyncio.wait(
                {link_task, score_task, stopper}, return_when=asyncio.FIRST_COMPLETED
            )
            for t in done:
                if t is not stopper and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            self.wakeup.set()
            # stopping: the scorer drains the queue and the outbox while the link is still up
            await asyncio.wait_for(score_task, timeout=30)
            if self.outbox:
                lost = sum(self.outbox_verdicts)
                self.metrics.inc("verdicts_dropped", lost)
                log.error(
                    "stopping while Zeek is away: %d verdict(s) not delivered (they are in the SIEM feed)",
                    lost,
                )
        finally:
            self.stop.set()
            self.link_stop.set()
            self.wakeup.set()
            try:
                await asyncio.wait_for(asyncio.shield(link_task), timeout=5)  # closes with code 1000
            except (TimeoutError, Exception):  # noqa: BLE001 - shutting down; the link reports its own errors
                pass
            for t in (link_task, log_task, score_task, stopper):
                if not t.done():
                    t.cancel()
            await asyncio.gather(link_task, log_task, score_task, stopper, return_exceptions=True)
            if metrics_server is not None:
                metrics_server.close()
            if observer is not None:
                observer.stop()
            if self.pool is not None:
                self.pool.close()
            if self.rules_worker is not None:
                self.rules_worker.close()
            if self.LOG_SUMMARY:
                log.info("stopped: %s", self.metrics.summary())


def _valid_topic(topic: str) -> bool:
    return 0 < len(topic) <= 200 and topic.isprintable()

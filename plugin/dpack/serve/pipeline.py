"""The scoring pipeline of ``dpack serve``: what happens to one message from Zeek.

decode (``zeek.codec``) -> contract and prefix checks (refusals) -> bounded queue -> micro-batches
(``serve.batch_size`` flows, or ``serve.max_delay_ms`` after the first) -> ``prefix.Scorer`` on the event
loop (receiving catches up between batches) -> verdict events for each batch's reply topic, SIEM feed
lines, anomalous verdicts for the rule writer. Connection summaries go to the record detectors.

The same pipeline runs in the serving process (``serve.workers: 0``) and in each scoring worker; what
differs is its ``Output``: the service itself (the Zeek link's outbox, the rule writer, refusals sent
once), or the pipe to the serving process (``workers.py``). Nothing a peer sends can stop it: bad
frames, wrong events, bad samples and refused batches are counted and logged (rate-limited).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import Config
from ..context.stage import context_scorer
from ..errors import CodecError, FrameTooLarge
from ..prefix.drift import DriftWatch, checked_baseline
from ..prefix.modelfile import LoadedModel
from ..prefix.scorer import Scorer
from ..records.scorer import RecordScorer
from ..sinks.siem import AlertFeed
from ..traffic.flows import FlowSample
from ..verdict import Verdict
from ..zeek import contract as C
from ..zeek.codec import (
    ConnectionBatch,
    ContractMismatch,
    SampleBatch,
    encode_verdicts,
    parse_connections,
    parse_samples,
)
from ..zeek.wire import Ack, ErrorReply, Event, decode_message
from .metrics import Metrics, RateLimitedLog
from .watch import GUARD_PREFIX, DayOneGuard

log = logging.getLogger(__name__)


class Output(Protocol):
    """Where a pipeline's results go (the serving process, or the pipe from a worker to it)."""

    def post(self, text: str, n: int) -> None:
        """A verdict event for Zeek, of ``n`` verdicts, to send in order."""

    async def flush(self) -> None:
        """Send what was posted, now (the latency of every verdict runs until here)."""

    async def refuse(self, topic: str, reason: str) -> None:
        """Tell the node on ``topic`` why its batches are refused (said once per topic and reason)."""

    def flagged(self, verdicts: Sequence[Verdict], nodes: Sequence[str]) -> None:
        """The anomalous verdicts, for the rule writer."""

    def report(self) -> None:
        """A message or a batch is done (a worker tells its parent what its counters did)."""

    async def status(self, topic: str, kind: str, msg: str) -> None:
        """A condition of the scorer for Zeek (``DPack::scorer_status``: drift, the day-one guard)."""


@dataclass(slots=True)
class Queued:
    """A flow sample waiting to be scored, with what its verdict needs."""

    sample: FlowSample
    reply_topic: str
    node: str
    sent: float  # the batch header's time (Zeek's wall clock), echoed in the verdict
    received: float  # when it arrived here (monotonic clock), for the latency figures


def valid_topic(topic: str) -> bool:
    return 0 < len(topic) <= 200 and topic.isprintable()


def version_reason(version: int, node: str) -> str:
    return (
        f"contract version {version} from node {node}, dpack speaks {C.CONTRACT_VERSION}; "
        "update the dpack Zeek package or dpack"
    )


class Pipeline:
    """Messages from Zeek in, verdicts out to ``output``; ``run`` scores until ``stop`` and the queue is
    empty. ``metrics`` and ``ratelog`` are the caller's (the service's own, or a worker's)."""

    def __init__(
        self,
        cfg: Config,
        model: LoadedModel,
        output: Output,
        metrics: Metrics,
        ratelog: RateLimitedLog,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.output = output
        self.metrics = metrics
        self.ratelog = ratelog
        self.scorer = self._scorer(model)
        self.context = context_scorer(model, self.cfg)
        self.record_scorer = RecordScorer.load(cfg.detectors.records_model, cfg.detectors.classifier_model)
        self.feed = AlertFeed(cfg.serve.alerts, cfg.serve.alerts_all) if cfg.serve.alerts else None
        self.queue: deque[Queued] = deque()
        self.stop = asyncio.Event()  # stop taking samples; ``run`` returns once the queue is scored
        self.wakeup = asyncio.Event()
        # a part of a batch shared among workers leaves what concerns the whole message (a refusal, a
        # message that does not decode or fit the contract) to part 0 (workers.py): counted once
        self.counts_message = True
        self.learner: Any = None  # learning mode (serve/learning.py): records samples, marks verdicts
        self._watch_model(model)

    def _scorer(self, model: LoadedModel) -> Scorer:
        sc = self.cfg.scoring
        return Scorer(model, explain=sc.explain, top_k=sc.top_k, cache_size=sc.cache_size)

    def use_model(self, model: LoadedModel) -> None:
        """Score the next batches with ``model`` (a batch being scored finishes with the old one)."""
        self.model = model
        self.scorer = self._scorer(model)
        old = self.context
        self.context = context_scorer(model, self.cfg)
        if old is not None and self.context is not None and old.state.key == self.context.state.key:
            self.context.state = old.state  # the hosts' histories outlive a model swap
        self._watch_model(model)

    def _watch_model(self, model: LoadedModel) -> None:
        """The day-one guard (``serve.guard``) and the drift watch for the model being served."""
        s = self.cfg.serve
        default = s.guard == "auto" and model.sha256 == _default_sha256()
        self.guard = (
            DayOneGuard(s.guard_window, s.guard_hosts_share, s.guard_min_hosts)
            if s.guard == "on" or default
            else None
        )
        baseline = checked_baseline(model.meta.get("score_baseline"))
        self.drift = DriftWatch(baseline, s.drift_window, s.drift_psi) if baseline else None

    def apply_config(self, new: Config) -> None:
        """What can change while serving: scoring and batching settings; the queue, the outputs and the
        record detectors keep their start-up settings until a restart."""
        rescore = new.scoring != self.cfg.scoring
        self.cfg.scoring, self.cfg.export = new.scoring, new.export
        self.cfg.serve.batch_size, self.cfg.serve.max_delay_ms = new.serve.batch_size, new.serve.max_delay_ms
        self.cfg.model = new.model
        if rescore:  # explain, top_k, cache_size: a scorer with the new settings (and an empty cache)
            self.scorer = self._scorer(self.model)
            if self.context is not None:  # the hosts' histories stay
                self.context.explain = new.scoring.explain != "none"

    # --- receiving ---------------------------------------------------------------------------------------

    async def on_message(
        self, raw: str | bytes | dict[str, Any] | Event | CodecError, received: float
    ) -> None:
        """One message: WebSocket text (or a worker's parsed part of one), or (native Broker) an already
        converted ``Event`` or the ``CodecError`` converting it raised. ``received``: when it arrived."""
        self.metrics.inc("messages_received")
        queued = len(self.queue)
        try:
            await self._take(raw, received)
        finally:
            if len(self.queue) == queued:  # no batch will report what this message did
                self.output.report()

    async def _take(self, raw: Any, received: float) -> None:
        try:
            if isinstance(raw, CodecError):
                raise raw
            msg = decode_message(raw)
            if isinstance(msg, ErrorReply):
                self.metrics.inc("zeek_errors")
                self.ratelog(
                    logging.ERROR,
                    "zeek-error",
                    "Zeek could not use a message of ours: %s (%s)",
                    msg.code,
                    msg.context,
                )
                return
            if isinstance(msg, Ack):
                return
            if msg.name == C.CONNECTIONS_EVENT:
                await self._accept_connections(parse_connections(msg))
                return
            batch = parse_samples(msg)  # refuses any other event with a reason
        except ContractMismatch as err:
            await self._refuse(err.reply_topic, version_reason(err.version, err.node), "version")
            return
        except FrameTooLarge as err:
            self.metrics.inc("frames_too_large")
            self.metrics.inc(err.counter, err.entries)
            self.ratelog(logging.WARNING, "too-large", "batch dropped: %s (%d entries)", err, err.entries)
            return
        except CodecError as err:
            if self.counts_message:
                self.metrics.inc("messages_malformed")
                self.ratelog(logging.WARNING, "malformed", "message from Zeek skipped: %s", err)
            return
        if not self.cfg.detectors.prefix:
            self.metrics.inc("flows_ignored", len(batch.samples))
            return
        await self._accept(batch, received)

    async def _refuse(self, topic: str, reason: str, kind: str) -> None:
        """``kind`` (version, prefix) keys the rate limit: the reason names the node, and a peer that
        makes up a new node name for every batch must not get a log line for each."""
        if not self.counts_message:
            return
        self.metrics.inc("batches_refused")
        self.ratelog(logging.ERROR, "refuse-" + kind, "batch refused: %s", reason)
        await self.output.refuse(topic, reason)

    def _refusal(self, batch: SampleBatch) -> str | None:
        h, spec = batch.header, self.model.spec
        if h.version != C.CONTRACT_VERSION:
            return version_reason(h.version, h.node)
        if (h.policy, h.packets, h.bytes) != (spec.policy, spec.n_packets, spec.n_bytes) or not math.isclose(
            h.max_wait, spec.max_wait, abs_tol=1e-6
        ):
            return (
                f"model {self.model.name} expects {spec.describe()}, node {h.node} sends "
                f"packets={h.packets} bytes={h.bytes} policy={h.policy} max_wait={h.max_wait:g}s; set "
                "DPack::policy/packets/packet_bytes/max_wait or use a matching model"
            )
        return None

    def _count_skipped(self, skipped: Sequence[str], counter: str, key: str, what: str) -> None:
        """The entries the codec left out of a batch: counted, and one rate-limited line with an example."""
        if skipped:
            self.metrics.inc(counter, len(skipped))
            self.ratelog(
                logging.WARNING, key, f"%d malformed {what} skipped, e.g.: %s", len(skipped), skipped[0]
            )

    async def _accept(self, batch: SampleBatch, received: float) -> None:
        if self.stop.is_set():
            self.metrics.inc("flows_dropped", len(batch.samples))
            self.ratelog(
                logging.WARNING, "stopping", "stopping: %d flow(s) arrived too late", len(batch.samples)
            )
            return
        self._count_skipped(batch.skipped, "samples_skipped", "sample", "sample(s)")
        reason = self._refusal(batch)
        if reason is not None:
            await self._refuse(batch.header.reply_topic, reason, "prefix")
            return
        h = batch.header
        if not valid_topic(h.reply_topic):
            if self.counts_message:
                self.metrics.inc("messages_malformed")
                self.ratelog(logging.WARNING, "topic", "batch with an unusable reply topic skipped")
            return
        room = self.cfg.serve.queue_size - len(self.queue)
        take = batch.samples[: max(room, 0)]
        if len(take) < len(batch.samples):
            n = len(batch.samples) - len(take)
            self.metrics.inc("flows_dropped", n)
            self.ratelog(
                logging.WARNING,
                "drop",
                "queue full (%d flows): %d flow(s) dropped",
                self.cfg.serve.queue_size,
                n,
            )
        self.queue.extend(Queued(s, h.reply_topic, h.node, h.sent, received) for s in take)
        self.metrics.inc("flows_received", len(take))
        self.metrics.queue_depth = len(self.queue)
        if take:
            self.wakeup.set()

    async def _accept_connections(self, batch: ConnectionBatch) -> None:
        """Connection summaries: scored at once by the record detectors (they are cheap, and Zeek batches
        them), then delivered like flow verdicts."""
        h = batch.header
        self._count_skipped(batch.skipped, "connections_skipped", "conn", "connection summar(ies)")
        if h.version != C.CONTRACT_VERSION:
            await self._refuse(h.reply_topic, version_reason(h.version, h.node), "version")
            return
        scorer = self.record_scorer
        if scorer is None or self.stop.is_set() or not valid_topic(h.reply_topic):
            self.metrics.inc("connections_ignored", len(batch.records))
            if scorer is None:
                self.ratelog(
                    logging.WARNING,
                    "no-records",
                    "connection summaries arrive but no record "
                    "detector is configured (detectors.records_model / classifier_model)",
                )
            return
        now = time.monotonic()
        self.metrics.inc("connections_received", len(batch.records))
        verdicts = await asyncio.to_thread(scorer.verdicts, batch.records)
        self.metrics.inc("connections_scored", len(verdicts))
        self.metrics.inc("connections_flagged", sum(v.anomalous for v in verdicts))
        n = len(verdicts)
        await self._deliver(verdicts, [h.reply_topic] * n, [h.node] * n, [h.sent] * n, [now] * n)

    # --- scoring and delivering ---------------------------------------------------------------------------

    async def _next_batch(self) -> list[Queued]:
        """Wait for flows; return up to batch_size of them once full or max_delay after the first (none
        when stopping with an empty queue)."""
        while not self.queue:
            if self.stop.is_set():
                return []
            self.wakeup.clear()
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
        batch = [self.queue.popleft() for _ in range(n)]
        self.metrics.queue_depth = len(self.queue)
        return batch

    async def _score(self, batch: list[Queued]) -> None:
        scorer = self.scorer  # a reload swaps self.scorer; this batch finishes with the one it started
        # Scored right here on the event loop, then the receiving loop catches up on what arrived
        # meanwhile. A worker thread (used before) cost more than it saved: GIL hand-overs with the
        # receiving loop slowed every batch (bench_live at 5,000 flows/s: p99 28 -> 9 ms, sustained
        # 10.6-12.4k -> 12.5-13.5k flows/s); receiving between batches keeps a backlog in our bounded
        # queue, where drops are counted, rather than in the socket.
        hits = scorer.cache_hits
        verdicts = scorer.verdicts([q.sample for q in batch])
        if self.context is not None:
            self.context.apply(verdicts)
        if self.learner is not None:
            self.learner.take([q.sample for q in batch], verdicts)
        else:
            await self._watch(verdicts, {q.reply_topic for q in batch})
        self.metrics.inc("inputs_from_cache", scorer.cache_hits - hits)
        await self._catch_up()
        self.metrics.inc("flows_scored", len(verdicts))
        self.metrics.inc("flows_flagged", sum(v.anomalous for v in verdicts))
        await self._deliver(
            verdicts,
            [q.reply_topic for q in batch],
            [q.node for q in batch],
            [q.sent for q in batch],
            [q.received for q in batch],
        )

    async def _watch(self, verdicts: Sequence[Verdict], topics: set[str]) -> None:
        """The day-one guard and the drift watch over a scored batch (not while learning)."""
        guard = self.guard
        if guard is not None:
            change = guard.add(verdicts)
            msg = ""
            if change == "on":
                self.metrics.inc("guard_engaged")
                msg = guard.describe(self.model.name)
                log.error("day-one guard: %s", msg)
            elif change == "off":
                msg = f"model {self.model.name} flags {guard.flagged_share:.0%} of the originators now"
                log.warning("day-one guard lifted: %s", msg)
            elif change == "fits":
                log.info(
                    "day-one guard: model %s flags %.0f%% of this site's originators over its first %d flows;"
                    " rules from now on",
                    self.model.name,
                    100 * guard.flagged_share,
                    guard.seen,
                )
            if change in ("on", "off"):
                for t in sorted(topics):
                    await self.output.status(t, f"guard_{change}", msg)
            # held until the guard has judged the model, and while it misfits
            if guard.engaged or guard.pending:
                for v in verdicts:
                    v.model = GUARD_PREFIX + v.model
        if self.drift is not None:
            for _service, msg in self.drift.add(verdicts):
                self.metrics.inc("drift_alarms")
                log.warning("model drift: %s", msg)
                for t in sorted(topics):
                    await self.output.status(t, "model_drift", msg)

    async def _catch_up(self) -> None:
        """After a batch: let the receiving loop take in what arrived while it was scored (it takes
        every buffered message in one turn), so that a backlog shows in our queue (scored in the next,
        fuller batch, or dropped and counted when the queue is full) instead of waiting in the socket.
        Bounded: stops after two quiet turns, when a batch is full, or after 256 turns."""
        counts, idle = self.metrics.counts, 0
        for _ in range(256):
            before = counts["messages_received"]
            await asyncio.sleep(0)
            idle = idle + 1 if counts["messages_received"] == before else 0
            # two quiet turns: the first may only have read the socket and woken the receiving task
            if idle >= 2 or len(self.queue) >= self.cfg.serve.batch_size:
                return

    async def _deliver(
        self,
        verdicts: Sequence[Verdict],
        topics: Sequence[str],
        nodes: Sequence[str],
        sent: Sequence[float],
        received: Sequence[float],
    ) -> None:
        """Verdicts to Zeek (grouped by reply topic), the SIEM feed and the rule writer."""
        now = time.monotonic()
        by_topic: dict[str, list[int]] = {}
        for i, topic in enumerate(topics):
            by_topic.setdefault(topic, []).append(i)
        for topic, idx in by_topic.items():
            text = encode_verdicts(
                topic, [verdicts[i] for i in idx], [sent[i] for i in idx], [now - received[i] for i in idx]
            )
            self.output.post(text, len(idx))
        await self.output.flush()
        done = time.monotonic()
        with self.metrics.lock:
            self.metrics.latency.extend(done - r for r in received)
        keep = [i for i, v in enumerate(verdicts) if not v.model.startswith(GUARD_PREFIX)]
        if len(keep) < len(verdicts):  # the day-one guard: to Zeek's log only, not the SIEM feed or rules
            verdicts, nodes = [verdicts[i] for i in keep], [nodes[i] for i in keep]
        if self.feed is not None:
            try:
                self.metrics.inc("alerts_written", self.feed.write(verdicts, nodes, time.time()))
            except OSError as err:
                self.metrics.inc("alert_write_errors")
                self.ratelog(logging.ERROR, "feed", "SIEM feed %s not written: %s", self.feed.path, err)
        flagged = [i for i, v in enumerate(verdicts) if v.anomalous]
        if flagged:
            self.output.flagged([verdicts[i] for i in flagged], [nodes[i] for i in flagged])
        self.output.report()

    async def run(self) -> None:
        """Score batches until ``stop`` is set and the queue is empty."""
        while True:
            batch = await self._next_batch()
            if batch:
                await self._score(batch)
            elif self.stop.is_set():
                return


@functools.cache
def _default_sha256() -> str:
    """The packaged default model's hash ("" without one): the model the day-one guard watches."""
    from ..config import default_model_path
    from ..fileio import sha256_file

    try:
        return sha256_file(default_model_path())
    except OSError:
        return ""

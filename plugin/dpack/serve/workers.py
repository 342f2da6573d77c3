"""``serve.workers``: the live scorer on more than one core.

With ``serve.workers: N`` (N >= 1) the ``dpack serve`` process keeps what must exist once - the Zeek link,
the outbox of verdicts waiting for Zeek, the metrics endpoint and the summary line, the Suricata rule
writer, the file watch - and deals every message from Zeek, unparsed, to N scoring workers: to an idle one
first, else round-robin; when several are idle and there are cores to spare, a batch goes to each of
them with a part number and each scores its share.
Each worker runs the very same ``Pipeline`` as in-process scoring (codec checks, bounded queue,
micro-batches, model, verdict events, SIEM feed lines appended with ``O_APPEND``); its ``Output`` is the
pipe to its parent (``PipeOutput``). What it hands back: verdict events to send, refusals (the parent says
each once), anomalous verdicts for the rule writer (only if the parent has hooks), and its counter deltas
and latencies after every message and batch.

One Python process tops out at one core (decoding, the model and explanations all hold the GIL); measured
with ``benchmarks/bench_live.py``. Workers are started through a forkserver (a clean single-threaded
process that has imported dpack once), get the parent's loaded model over the pipe, and get every new
model or config the parent accepts while serving. A worker that dies is logged, its flows still queued
are counted as dropped, and it is started again.

Frames in both directions: 4-byte length + pickle (both ends are this program, over a socket pair).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import pickle
import signal
import socket
import struct
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from ..config import Config, usable_cores
from ..errors import CodecError, FrameTooLarge
from ..prefix.modelfile import LoadedModel
from ..verdict import Verdict
from ..zeek.contract import CONNECTIONS_EVENT, SAMPLES_EVENT
from ..zeek.wire import MAX_FRAME_TEXT, Event, batch_entries, decode_message, split_batch, split_by_host
from .metrics import Metrics, RateLimitedLog
from .pipeline import Output, Pipeline


class Host(Output, Protocol):
    """What the pool needs of the service that holds it (``service.Service``)."""

    cfg: Config
    model: LoadedModel
    hooks: list[Any]
    metrics: Metrics
    ratelog: RateLimitedLog


log = logging.getLogger(__name__)

_LEN = struct.Struct("!I")
# Counters the parent keeps itself; a worker's own counts of these are not added to the parent's.
PARENT_COUNTERS = frozenset(
    {
        "messages_received",
        "verdicts_sent",
        "verdicts_dropped",
        "reconnects",
        "model_reloads",
        "model_reload_failures",
        "config_reload_failures",
        "hook_errors",
    }
)
# Bytes of messages a worker has not read yet, beyond which the parent drops (and counts) new messages
# for it: about one flow queue's worth (a sample is ~1 KiB of JSON), bounded.
_BYTES_PER_FLOW = 1024
_MAX_BACKLOG = 64 * 1024 * 1024
# A batch is shared by idle workers in parts of at least SPLIT_MIN samples (SPLIT_BYTES of JSON).
SPLIT_MIN = 8
SPLIT_BYTES = SPLIT_MIN * 1024
RESTART_LIMIT = 10  # restarts of one worker slot; beyond, the slot stays empty (logged)


def _frame(obj: Any) -> list[bytes]:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return [_LEN.pack(len(body)), body]


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (n,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    return pickle.loads(await reader.readexactly(n))


async def _open(conn: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Asyncio streams over a ``multiprocessing`` pipe end (a socket pair on Unix)."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    conn.close()
    return await asyncio.open_connection(sock=sock, limit=2**20)


def count_dropped(raw: Any) -> tuple[str, int]:
    """The counter and the number of entries of a message the parent drops without a worker having
    decoded it: ("flows_dropped", samples) or ("connections_dropped", summaries); no entries if it is
    neither or does not decode (a worker would have counted it malformed)."""
    if isinstance(raw, CodecError):  # from the Broker link: nothing to count
        return "flows_dropped", 0
    try:
        msg = decode_message(raw)
    except FrameTooLarge as err:
        return err.counter, err.entries
    except CodecError:
        return "flows_dropped", 0
    batch = batch_entries(msg) if isinstance(msg, Event) else None
    if isinstance(msg, Event) and batch is not None and msg.name in (SAMPLES_EVENT, CONNECTIONS_EVENT):
        return ("flows_dropped" if msg.name == SAMPLES_EVENT else "connections_dropped"), len(batch)
    return "flows_dropped", 0


_CONN_NAME = f'"{CONNECTIONS_EVENT}"'.encode()


def is_connections(raw: Any) -> bool:
    """Whether a message looks like a connection-summary batch: its event name comes within the first
    few hundred bytes (after a topic of at most 200). A false guess only changes which worker decodes it."""
    if isinstance(raw, Event):
        return raw.name == CONNECTIONS_EVENT
    if not isinstance(raw, str | bytes):
        return False
    head = raw[:600] if isinstance(raw, bytes) else raw[:600].encode(errors="replace")
    return _CONN_NAME in head


# --- the worker ------------------------------------------------------------------------------------------


class PipeOutput:
    """A worker pipeline's ``Output``: everything goes back to the parent over the pipe."""

    def __init__(self, writer: asyncio.StreamWriter, metrics: Metrics, forward_hooks: bool) -> None:
        self.writer, self.metrics, self.forward_hooks = writer, metrics, forward_hooks
        self.pipeline: Pipeline | None = None
        self._pushed = dict(metrics.counts)

    def write(self, obj: Any) -> None:
        self.writer.writelines(_frame(obj))

    def post(self, text: str, n: int) -> None:
        self.write(("send", text, n))

    async def flush(self) -> None:
        await self.writer.drain()

    async def refuse(self, topic: str, reason: str) -> None:
        self.write(("refuse", topic, reason))  # the parent says it once, not once per worker

    async def status(self, topic: str, kind: str, msg: str) -> None:
        self.write(("status", topic, kind, msg))

    def flagged(self, verdicts: Sequence[Verdict], nodes: Sequence[str]) -> None:
        if self.forward_hooks:
            self.write(("hook", list(verdicts), list(nodes)))

    def report(self) -> None:
        """Counter deltas and latencies since the last report, and the queue depth."""
        c = self.metrics.counts
        deltas = {k: v - self._pushed[k] for k, v in c.items() if v != self._pushed[k]}
        lat = list(self.metrics.latency)
        self.metrics.latency.clear()
        self._pushed = dict(c)
        queued = len(self.pipeline.queue) if self.pipeline is not None else 0
        self.write(("metrics", deltas, lat, queued))


async def _on_part(pipeline: Pipeline, raw: Any, received: float, index: int, parts: int) -> None:
    """Part ``index`` of ``parts`` of a batch the parent handed whole to several idle workers: each parses
    the frame and takes its share of the entries. Anything that is not such a batch (or has fewer entries
    than parts) is handled whole by part 0 only, so each message is counted once; refusals and a message
    that does not decode or fit the contract, the same for every part, are counted by part 0 only."""
    share = None
    if not (isinstance(raw, str | bytes) and len(raw) > MAX_FRAME_TEXT):  # too large: part 0 refuses it
        try:
            obj = raw if isinstance(raw, Event) else json.loads(raw)
            ctx = pipeline.context
            share = (
                split_by_host(obj, parts, ctx.state.host_of) if ctx is not None else split_batch(obj, parts)
            )
        except (ValueError, RecursionError):
            share = None
    if share is not None and index < len(share):
        pipeline.counts_message = index == 0
        try:
            await pipeline.on_message(share[index], received)
        finally:
            pipeline.counts_message = True
    elif index == 0:
        await pipeline.on_message(raw, received)
    else:
        pipeline.metrics.inc("messages_received")
        pipeline.output.report()


async def _serve_parent(reader: asyncio.StreamReader, pipeline: Pipeline) -> None:
    """Messages and commands from the parent, until it says stop (or goes away)."""
    while not pipeline.stop.is_set():
        try:
            msg = await _read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.error("the serving process went away; finishing what is queued")
            break
        kind = msg[0]
        if kind == "msg":
            await pipeline.on_message(msg[1], msg[2])
        elif kind == "part":
            await _on_part(pipeline, msg[1], msg[2], msg[3], msg[4])
        elif kind == "model":
            pipeline.use_model(msg[1])
        elif kind == "config":
            pipeline.apply_config(msg[1])
        elif kind == "stop":
            break
    pipeline.stop.set()
    pipeline.wakeup.set()


def _worker_main(
    conn: Any,
    cfg: Config,
    model: LoadedModel,
    index: int,
    forward_hooks: bool,
    log_setup: tuple[str, int, int],
) -> None:
    """A worker process: serve the parent until it says stop (or goes away), then report done."""
    # The parent decides when to stop (SIGTERM/SIGINT also reach the whole process group).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fmt, root_level, dpack_level = log_setup
    logging.basicConfig(format=fmt.replace("dpack:", f"dpack[worker {index}]:"), level=root_level)
    logging.getLogger("dpack").setLevel(dpack_level)

    async def main() -> None:
        reader, writer = await _open(conn)
        torch.set_num_threads(1)
        metrics = Metrics()
        output = PipeOutput(writer, metrics, forward_hooks)
        pipeline = Pipeline(cfg, model, output, metrics, RateLimitedLog())
        output.pipeline = pipeline
        await asyncio.gather(_serve_parent(reader, pipeline), pipeline.run())
        output.report()
        output.write(("done",))
        await writer.drain()
        writer.close()

    asyncio.run(main())


# --- the parent ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Worker:
    index: int
    proc: Any
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None = None
    done: bool = False
    queued: int = 0  # flows waiting in the worker, as it last said
    sent: int = 0  # messages handed to it
    taken: int = 0  # messages it has taken in, as it last said
    in_flows: int = 0  # flows it took into its queue
    out_flows: int = 0  # flows it scored
    restarts: int = 0

    @property
    def idle(self) -> bool:
        """Nothing handed to it is waiting or being scored (as of its last report, sent after every
        batch and every message that queued nothing)."""
        return not self.done and self.sent == self.taken and self.queued == 0


class WorkerPool:
    """``serve.workers: N``, the service's scoring (``service.Scoring``): starts the workers, deals
    messages to them, hands what they send back to the service."""

    def __init__(self, service: Host, n: int) -> None:
        self.svc = service
        self.n = n
        self.workers: list[_Worker | None] = [None] * n
        self.next = 0
        self.backlog_limit = min(_MAX_BACKLOG, service.cfg.serve.queue_size * _BYTES_PER_FLOW)
        self.stopping = False
        self._stopping = asyncio.Event()
        # Parts a batch may be shared in: one core stays for this process and Zeek. On the 2-core
        # development machine sharing raised p99 at 5,000 flows/s (6 alternating runs of bench_live:
        # median 16.4 against 12.6 ms; p50 3.3-5.4 against 4.7-6.2 ms): both workers busy at once left
        # no core for the link, so it is off there.
        self.max_parts = max(1, usable_cores() - 1)
        root = logging.getLogger()
        fmt = root.handlers[0].formatter._fmt if root.handlers and root.handlers[0].formatter else None
        self.log_setup = (
            fmt or "%(asctime)s dpack: %(levelname)s: %(message)s",
            root.level,
            logging.getLogger("dpack").getEffectiveLevel(),
        )

    def _child_config(self) -> Config:
        cfg = dataclasses.replace(self.svc.cfg)
        cfg.serve = dataclasses.replace(cfg.serve, workers=0, metrics_port=0, watch=False)
        cfg.rules = {}
        return cfg

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(i, 0) for i in range(self.n)))

    async def _spawn(self, index: int, restarts: int) -> None:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["dpack.serve.workers"])  # the workers fork from a process that has torch
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_worker_main,
            name=f"dpack-serve-worker-{index}",
            daemon=True,
            args=(child, self._child_config(), self.svc.model, index, bool(self.svc.hooks), self.log_setup),
        )
        await asyncio.to_thread(proc.start)  # the first start launches the forkserver (seconds)
        child.close()
        reader, writer = await _open(parent)
        w = _Worker(index, proc, reader, writer, restarts=restarts)
        self.workers[index] = w
        w.task = asyncio.create_task(self._read(w))

    def broadcast(self, obj: Any) -> None:
        for w in self.workers:
            if w is not None and not w.done:
                w.writer.writelines(_frame(obj))

    def use_model(self, model: LoadedModel) -> None:
        self.broadcast(("model", model))

    def apply_config(self, new: Config) -> None:
        self.broadcast(("config", new))

    async def on_message(self, raw: Any, received: float) -> None:
        self.svc.metrics.inc("messages_received")
        self.forward(raw, received)

    def forward(self, raw: Any, received: float) -> None:
        """Hand a message to a worker: an idle one if there is one, else the next in turn whose unread
        backlog has room; with several workers idle (and cores to spare: ``max_parts``), a batch big
        enough goes to each of them with a part number, and each scores its share (side by side: at light
        load a verdict waits for half the batch, not all of it; the frame is not parsed here, so this
        process stays free for the link).
        With no room anywhere it is dropped, counted. Connection summaries all go to worker 0: the record
        detectors keep per-host state over time."""
        if not self.stopping:
            if is_connections(raw):
                if self._take(self.workers[0], raw, received):
                    return
            elif self.by_host():
                # host context: every worker gets the batch and scores the flows of its hosts (always the
                # same worker for one host); a worker without room drops the whole batch, counted once
                ws = [w for w in self.workers if w is not None and not w.done]
                room = all(w.writer.transport.get_write_buffer_size() < self.backlog_limit for w in ws)
                if ws and room and len(ws) == self.n:
                    for i, w in enumerate(ws):
                        self._take(w, raw, received, i, len(ws))
                    return
            else:
                idle = [w for w in self._in_turn() if w.idle]
                parts = min(len(idle), self._parts(raw), self.max_parts)
                if parts >= 2:
                    for i, w in enumerate(idle[:parts]):
                        self._take(w, raw, received, i, parts)
                    return
                for w in idle + self._in_turn():
                    if self._take(w, raw, received):
                        self.next = (w.index + 1) % self.n
                        return
        counter, n = count_dropped(raw)
        self.svc.metrics.inc(counter, n)
        why = "stopping" if self.stopping else "the scoring workers are behind"
        self.svc.ratelog(logging.WARNING, "pool-drop", "%s: a message of %d entries dropped", why, n)

    def by_host(self) -> bool:
        """Flows are dealt by host while the model has a host-context stage that is on."""
        return self.svc.model.context is not None and self.svc.cfg.detectors.context

    def _in_turn(self) -> list[_Worker]:
        """The live workers, the next in turn first."""
        ws = self.workers[self.next :] + self.workers[: self.next]
        return [w for w in ws if w is not None and not w.done]

    @staticmethod
    def _parts(raw: Any) -> int:
        """Into how many parts a batch may be cut, judged by its size (a sample is ~1.1 KiB of JSON): at
        least SPLIT_MIN samples each, else the extra parse and messages cost more than they save."""
        if isinstance(raw, Event):
            batch = batch_entries(raw)
            return len(batch) // SPLIT_MIN if batch is not None else 0
        return len(raw) // SPLIT_BYTES if isinstance(raw, str | bytes) else 0

    def _take(self, w: _Worker | None, raw: Any, received: float, part: int = 0, parts: int = 1) -> bool:
        if w is None or w.done or w.writer.transport.get_write_buffer_size() >= self.backlog_limit:
            return False
        if parts > 1:
            w.writer.writelines(_frame(("part", raw, received, part, parts)))
        else:
            w.writer.writelines(_frame(("msg", raw, received)))
        w.sent += 1
        return True

    async def _read(self, w: _Worker) -> None:
        svc, m = self.svc, self.svc.metrics
        try:
            while True:
                msg = await _read_frame(w.reader)
                kind = msg[0]
                if kind == "send":
                    svc.post(msg[1], msg[2])
                    await svc.flush()
                elif kind == "metrics":
                    deltas, lat, w.queued = msg[1], msg[2], msg[3]
                    w.taken += deltas.get("messages_received", 0)
                    w.in_flows += deltas.get("flows_received", 0)
                    w.out_flows += deltas.get("flows_scored", 0)
                    with m.lock:
                        for k, v in deltas.items():
                            if k not in PARENT_COUNTERS:
                                m.counts[k] += v
                        m.latency.extend(lat)
                    m.queue_depth = sum(x.queued for x in self.workers if x is not None)
                elif kind == "refuse":
                    await svc.refuse(msg[1], msg[2])
                elif kind == "status":
                    await svc.status(msg[1], msg[2], msg[3])
                elif kind == "hook":
                    svc.flagged(msg[1], msg[2])
                elif kind == "done":
                    w.done = True
                    return
        except (asyncio.IncompleteReadError, ConnectionError, EOFError, pickle.UnpicklingError):
            pass
        await asyncio.to_thread(w.proc.join, 5)
        lost = max(0, w.in_flows - w.out_flows)
        m.inc("flows_dropped", lost)
        m.inc("worker_restarts")
        w.done = True
        if self.stopping:
            log.error(
                "scoring worker %d ended (exit code %s) while stopping: %d queued flow(s) lost",
                w.index,
                w.proc.exitcode,
                lost,
            )
            return
        if w.restarts >= RESTART_LIMIT:
            log.error(
                "scoring worker %d ended (exit code %s) for the %dth time; not restarted, %d queued "
                "flow(s) lost",
                w.index,
                w.proc.exitcode,
                w.restarts + 1,
                lost,
            )
            return
        log.error(
            "scoring worker %d ended (exit code %s): %d queued flow(s) lost (counted as dropped); "
            "restarting it",
            w.index,
            w.proc.exitcode,
            lost,
        )
        await self._spawn(w.index, w.restarts + 1)

    async def run(self) -> None:
        """Until the service stops; then every worker scores what it holds, and the outbox is flushed."""
        await self._stopping.wait()
        self.stopping = True
        self.broadcast(("stop",))
        tasks = [w.task for w in self.workers if w is not None and w.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=25)  # each ends at its worker's "done" (or its end)
        await self.svc.flush()

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        for w in self.workers:
            if w is None:
                continue
            if w.task is not None and not w.task.done():
                w.task.cancel()
            w.writer.close()
            if w.proc.is_alive():
                w.proc.join(2)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(2)

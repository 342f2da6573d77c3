"""``dpack score``: every flow of a capture scored, streaming, on one core or several (shards of the
flows, each read, grouped, encoded and scored by its own process, merged back in one process's order)."""

from __future__ import annotations

import dataclasses
import heapq
import logging
import multiprocessing as mp
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import IO, Any

import numpy as np
import torch

from ..context.stage import ContextScorer
from ..errors import DpackError
from ..prefix.flowset import encode_samples
from ..prefix.scorer import Scorer
from ..traffic import handshake
from ..traffic.capture import CaptureStats, read_blocks, read_capture
from ..traffic.encode import PrefixSpec
from ..traffic.flows import FlowRules, FlowSample, FlowStats, FlowTable
from ..verdict import Verdict

log = logging.getLogger(__name__)


@dataclass
class ScoreRun:
    """What an offline run saw, for the summary."""

    flows: int = 0
    flagged: int = 0
    capture: CaptureStats = field(default_factory=CaptureStats)
    flow_stats: FlowStats = field(default_factory=FlowStats)
    top: list[Verdict] = field(default_factory=list)


def _chunks(it: Iterable[FlowSample], size: int) -> Iterator[list[FlowSample]]:
    buf: list[FlowSample] = []
    for s in it:
        buf.append(s)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def _encoded_chunks(
    path: str | os.PathLike[str],
    spec: PrefixSpec,
    rules: FlowRules | None,
    size: int,
    run: ScoreRun,
    shard: int = 0,
    shards: int = 1,
) -> Iterator[tuple[list[FlowSample], np.ndarray, np.ndarray]]:
    """Read, group into flows and encode a capture: chunks of (samples without frames, data, direction).
    With ``shards`` > 1, only the flows of ``shard`` (``flows.shard_of``)."""
    table = FlowTable(spec, rules)
    run.flow_stats = table.stats
    for chunk in _chunks(table.block_samples(read_blocks(path, run.capture), shard, shards), size):
        data, direction = encode_samples(chunk, spec)
        for smp in chunk:
            smp.handshake = handshake.from_frames(smp.frames)
            smp.frames = []  # encoded; no need to keep the bytes
        yield chunk, data, direction


def _verdict_line(v: Verdict) -> str:
    return v.to_json() + "\n"


def score_capture(
    path: str | os.PathLike[str],
    scorer: Scorer,
    out: IO[str] | None = None,
    batch_size: int = 4096,
    rules: FlowRules | None = None,
    keep_top: int = 10,
    on_verdicts: Any = None,
    workers: int = 1,
    context: ContextScorer | None = None,
    progress: Any = None,
) -> ScoreRun:
    """Score every flow of a capture, streaming: verdict JSON lines go to ``out`` as batches finish.

    ``workers`` > 1 splits the flows into that many shards, each read, grouped, encoded and scored by its
    own process (``_shard_worker``); their verdicts merge back in the order one process writes them.
    ``context``: the host-context stage, applied here to that one ordered stream (shards split flows,
    not hosts), as ``dpack serve`` applies it to the flows of each host in the order they arrive.
    ``progress``: called with the number of flows of each batch as it is written (a progress bar).
    """
    run = ScoreRun()

    def emit(vs: Sequence[Verdict], lines: Sequence[str] | None = None) -> None:
        """Account verdicts; from shards, ``lines`` holds every verdict's line and ``vs`` all verdicts
        only if ``on_verdicts`` wants them (else the flagged ones)."""
        n = len(vs) if lines is None else len(lines)
        run.flows += n
        if progress is not None:
            progress(n)
        flagged = [v for v in vs if v.anomalous]
        run.flagged += len(flagged)
        if flagged:
            run.top = sorted(run.top + flagged, key=lambda v: -v.score)[:keep_top]
        if out is not None:
            out.write("".join(lines if lines is not None else map(_verdict_line, vs)))
        if on_verdicts is not None:
            on_verdicts(vs)

    if workers <= 1 or "fork" not in mp.get_all_start_methods():
        for samples, data, direction in _encoded_chunks(path, scorer.model.spec, rules, batch_size, run):
            vs = scorer.verdicts_encoded(samples, data, direction)
            if context is not None:
                context.apply(vs)
            emit(vs)
        return run
    stage = context

    def with_context(vs: Sequence[Verdict], lines: Sequence[str] | None = None) -> None:  # all verdicts
        assert stage is not None
        stage.apply(vs)
        emit(vs, [_verdict_line(v) for v in vs])

    send_all = on_verdicts is not None or context is not None
    sink = emit if context is None else with_context
    _score_sharded(path, scorer, sink, batch_size, rules, workers, send_all, run)
    return run


# --- sharded scoring (dpack score on several cores) ------------------------------------------------------


def _shard_worker(
    conn: Connection,
    path: str | os.PathLike[str],
    scorer: Scorer,
    size: int,
    rules: FlowRules | None,
    shard: int,
    shards: int,
    send_all: bool,
) -> None:
    """One shard of ``score_capture``: sends ("chunk", orders, JSON lines, [(i, verdict)]) per batch (the
    verdicts: all of them, or only the flagged ones, which are what the parent counts and ranks), then
    ("end", capture stats, flow stats), or ("error", text)."""
    torch.set_num_threads(1)  # one process per core
    run = ScoreRun()
    try:
        spec = scorer.model.spec
        for samples, data, direction in _encoded_chunks(path, spec, rules, size, run, shard, shards):
            vs = scorer.verdicts_encoded(samples, data, direction)
            keep = [(i, v) for i, v in enumerate(vs) if send_all or v.anomalous]
            conn.send(("chunk", [s.order for s in samples], [_verdict_line(v) for v in vs], keep))
        conn.send(("end", run.capture, run.flow_stats))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


def _score_sharded(
    path: str | os.PathLike[str],
    scorer: Scorer,
    emit: Any,
    size: int,
    rules: FlowRules | None,
    shards: int,
    send_all: bool,
    run: ScoreRun,
) -> None:
    next(iter(read_capture(path)), None)  # a file that cannot be read fails here, with its one-line error
    ctx = mp.get_context("fork")  # the children share the loaded model; nothing to import or pickle
    conns, procs = [], []
    for shard in range(shards):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_shard_worker,
            daemon=True,
            name=f"dpack-score-{shard}",
            args=(child, path, scorer, size, rules, shard, shards, send_all),
        )
        proc.start()
        child.close()
        conns.append(parent)
        procs.append(proc)
    stats: list[tuple[CaptureStats, FlowStats]] = []

    def stream(conn: Connection, proc: Any) -> Iterator[tuple[tuple[int, int], str, Verdict | None]]:
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                raise DpackError(f"scoring worker {proc.name} ended without a result") from None
            if msg[0] == "error":
                raise DpackError(f"scoring worker {proc.name} failed: {msg[1]}")
            if msg[0] == "end":
                stats.append((msg[1], msg[2]))
                return
            orders, lines, keep = msg[1], msg[2], dict(msg[3])
            for i, (order, line) in enumerate(zip(orders, lines, strict=True)):
                yield order, line, keep.get(i)

    try:
        batch: list[tuple[tuple[int, int], str, Verdict | None]] = []
        for item in heapq.merge(*(stream(c, p) for c, p in zip(conns, procs, strict=True)), key=_first):
            batch.append(item)
            if len(batch) >= size:
                _emit_merged(emit, batch)
                batch = []
        _emit_merged(emit, batch)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
    run.capture = stats[0][0]  # every shard read the whole capture
    for _, f in stats:  # each shard counted its own flows and frames
        for fld in dataclasses.fields(FlowStats):
            setattr(run.flow_stats, fld.name, getattr(run.flow_stats, fld.name) + getattr(f, fld.name))


def _first(item: tuple[Any, ...]) -> Any:
    return item[0]


def _emit_merged(emit: Any, batch: list[tuple[tuple[int, int], str, Verdict | None]]) -> None:
    if batch:
        emit([v for _, _, v in batch if v is not None], [line for _, line, _ in batch])

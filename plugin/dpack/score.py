"""Scoring: flow samples -> verdicts (score, threshold, anomalous, explanation), offline and live alike."""

from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import math
import multiprocessing as mp
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import IO, Any

import numpy as np
import torch

from .capture import CaptureStats, read_blocks, read_capture
from .dataset import encode_samples
from .errors import DpackError
from .flows import FlowRules, FlowSample, FlowStats, FlowTable
from .model import to_input
from .modelfile import LoadedModel
from .packets import FIELD_NAMES, PrefixSpec, field_layout, tcp_handshake_completed

log = logging.getLogger(__name__)

EXPLAIN_MODES = ("anomalous", "all", "none")


@dataclass(slots=True)
class Verdict:
    ts: float
    proto: str
    src: str
    sport: int
    dst: str
    dport: int
    community_id: str
    score: float
    threshold: float
    anomalous: bool
    model: str
    explanation: list[str] = field(default_factory=list)
    uid: str = ""
    # TCP handshake completed (packets.tcp_handshake_completed), for the rules' require_handshake; worked out
    # for anomalous verdicts only (the rules look at no others: for every flow it was half the live scoring
    # time of benign batches); not in the JSON
    handshake: bool = False
    detector: str = "prefix"  # prefix (D-PACK, first packets) | records | classifier (connection summaries)
    category: str = ""  # the classifier's category of a connection, when one is configured
    confidence: float = 0.0  # the classifier's probability for that category

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "ts": round(self.ts, 6),
            "proto": self.proto,
            "src": self.src,
            "sport": self.sport,
            "dst": self.dst,
            "dport": self.dport,
            "community_id": self.community_id,
            "score": float(f"{self.score:.6g}"),
            "threshold": float(f"{self.threshold:.6g}"),
            "anomalous": self.anomalous,
            "model": self.model,
            "explanation": self.explanation,
        }
        if self.uid:
            d["uid"] = self.uid
        if self.detector != "prefix":
            d |= {
                "detector": self.detector,
                "category": self.category,
                "confidence": round(self.confidence, 4),
            }
        return d

    def to_json(self) -> str:
        """``json.dumps(self.to_dict(), separators=(",", ":"))``, built as text for prefix verdicts (the
        encoder's set-up per line cost a tenth of ``dpack score``'s time)."""
        if self.detector != "prefix":
            return json.dumps(self.to_dict(), separators=(",", ":"))
        uid = f',"uid":{_jstr(self.uid)}' if self.uid else ""
        return (
            f'{{"ts":{_jnum(round(self.ts, 6))},"proto":{_jstr(self.proto)},"src":{_jstr(self.src)},'
            f'"sport":{int(self.sport)},"dst":{_jstr(self.dst)},"dport":{int(self.dport)},'
            f'"community_id":{_jstr(self.community_id)},"score":{_jnum(float(f"{self.score:.6g}"))},'
            f'"threshold":{_jnum(float(f"{self.threshold:.6g}"))},'
            f'"anomalous":{"true" if self.anomalous else "false"},"model":{_jstr(self.model)},'
            f'"explanation":[{",".join(map(_jstr, self.explanation))}]{uid}}}'
        )


_jstr = json.encoder.encode_basestring_ascii  # what json.dumps writes for a str


def _jnum(x: float) -> str:
    return repr(x) if math.isfinite(x) else json.dumps(x)  # NaN, Infinity: as json.dumps writes them


def explain_rows(
    model: LoadedModel,
    x: torch.Tensor,
    data: np.ndarray,
    direction: np.ndarray,
    top_k: int = 3,
    attribution: torch.Tensor | None = None,
) -> list[list[str]]:
    """For each flow, the ``top_k`` input fields that raised the score most, as ``p<slot>.<field>``.

    A field's weight is the sum of the positive attributions of its bytes; a packet's ``direction`` and,
    for an empty slot, ``absent`` (the missing packet itself is the evidence) are fields too.
    ``attribution``: ``model.net.attribution(x)`` if already computed.
    """
    b = len(x)
    if b == 0:
        return []
    n, length = model.spec.n_packets, model.spec.n_bytes
    attr = (model.net.attribution(x) if attribution is None else attribution).numpy()  # (B, 2, N*L)
    pos = np.clip(attr[:, 0].reshape(b, n, length), 0, None)  # (B, N, L)
    d = attr[:, 1].reshape(b, n, length).sum(axis=2)  # (B, N) direction channel per packet
    present = direction != 0  # (B, N)
    gid = np.zeros((b, n, length), dtype=np.intp)
    for i, j in zip(*np.nonzero(present), strict=True):
        gid[i, j] = field_layout(data[i, j])
    v = len(FIELD_NAMES) + 2  # + direction, absent
    flat = (np.arange(b * n).reshape(b, n, 1) * v + gid).ravel()  # (B*N*L,) into (B, N, V)
    sums = np.bincount(flat, weights=(pos * present[:, :, None]).ravel(), minlength=b * n * v)
    sums = sums.reshape(b, n, v)
    sums[:, :, v - 2] = np.where(present, d, 0.0)
    sums[:, :, v - 1] = np.where(present, 0.0, pos.sum(axis=2) + np.clip(d, 0, None))
    sums = sums.reshape(b, n * v)
    k = min(top_k, n * v)
    top = np.argpartition(-sums, k - 1, axis=1)[:, :k]  # (B, k) unordered
    vals = np.take_along_axis(sums, top, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    top, vals = np.take_along_axis(top, order, axis=1).tolist(), np.take_along_axis(vals, order, axis=1) > 0
    names = [*FIELD_NAMES, "direction", "absent"]
    return [[f"p{c // v + 1}.{names[c % v]}" for c, ok in zip(row, keep, strict=True) if ok]
            for row, keep in zip(top, vals.tolist(), strict=True)]  # fmt: skip


def _handshake(smp: FlowSample) -> bool:
    return smp.handshake if smp.handshake is not None else tcp_handshake_completed(smp.frames)


def _distinct_rows(data: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
    """Indices of the distinct encoded flows (data + direction), per flow which of them it equals, and
    each distinct input's bytes (the key of ``Scorer``'s cache)."""
    b = len(data)
    key = np.ascontiguousarray(np.concatenate([data.reshape(b, -1), direction.view(np.uint8)], axis=1))
    rows = key.view(np.dtype((np.void, key.shape[1]))).ravel()
    distinct, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1), [r.tobytes() for r in distinct]


DEFAULT_CACHE_SIZE = 16_384


class Scorer:
    """Scores batches of flow samples with one loaded model."""

    def __init__(
        self,
        model: LoadedModel,
        explain: str = "anomalous",
        top_k: int = 3,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if explain not in EXPLAIN_MODES:
            raise ValueError(f"explain must be one of {EXPLAIN_MODES}")
        self.model = model
        self.explain = explain
        self.top_k = top_k
        self.name = model.name
        # Encoded input -> (score, explanation) of the most recently seen distinct inputs (LRU). The
        # model is a pure function of the input, and floods, scans and brute force repeat a handful of
        # masked shapes across batches; live batches are small (Zeek's 64), so the within-batch
        # deduplication alone misses most repeats. Lives and dies with this Scorer (a new model is a
        # new Scorer). 0 turns it off.
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, tuple[float, list[str]]] = OrderedDict()
        self.cache_hits = 0

    def scores(self, data: np.ndarray, direction: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model.net.score(to_input(data, direction)).numpy()

    def verdicts(self, samples: Sequence[FlowSample]) -> list[Verdict]:
        """Verdicts for flow samples (their frames are encoded here)."""
        if not samples:
            return []
        return self.verdicts_encoded(samples, *encode_samples(samples, self.model.spec))

    def verdicts_encoded(
        self, samples: Sequence[FlowSample], data: np.ndarray, direction: np.ndarray
    ) -> list[Verdict]:
        """Verdicts for samples already encoded with ``encode_samples`` under this model's spec."""
        if not samples:
            return []
        # Identical inputs get identical verdicts: score each distinct one once. Floods and scans repeat
        # one packet shape thousands of times (lab-dev attack-dev: 8,441 flows, 2,147 distinct inputs).
        first, inverse, keys = _distinct_rows(data, direction)
        cache = self._cache
        known = [cache.get(k) for k in keys] if self.cache_size else [None] * len(keys)
        todo = [j for j, hit in enumerate(known) if hit is None]
        self.cache_hits += len(keys) - len(todo)
        thr = self.model.threshold
        us = np.empty(len(keys), dtype=np.float32)  # what the model returns; compared as before
        explained: list[list[str]] = [[]] * len(keys)
        for j, hit in enumerate(known):
            if hit is not None:
                us[j], explained[j] = hit
                cache.move_to_end(keys[j])
        if todo:
            sel = first[todo]
            ud, ur = data[sel], direction[sel]
            x = to_input(ud, ur)
            if self.explain == "none":
                with torch.no_grad():
                    us[todo] = self.model.net.score(x).numpy()
            else:  # a flagged flow's score and explanation from one forward pass
                scores, attribution = self.model.net.scored(x)
                fresh = scores.numpy()
                us[todo] = fresh
                idx = np.arange(len(todo)) if self.explain == "all" else np.flatnonzero(fresh > thr)
                if len(idx):
                    rows = explain_rows(self.model, x[idx], ud[idx], ur[idx], self.top_k, attribution(idx))
                    for t, row in zip(idx.tolist(), rows, strict=True):
                        explained[todo[t]] = row
            if self.cache_size:
                for j in todo:
                    cache[keys[j]] = (float(us[j]), explained[j])
                while len(cache) > self.cache_size:
                    cache.popitem(last=False)
        s = us[inverse]
        flagged = s > thr
        inv = inverse.tolist()
        return [
            Verdict(
                smp.ts,
                smp.proto_name,
                smp.src,
                smp.sport,
                smp.dst,
                smp.dport,
                smp.community_id,
                float(s[i]),
                thr,
                bool(flagged[i]),
                self.name,
                list(explained[inv[i]]),
                smp.uid,
                bool(flagged[i]) and _handshake(smp),
            )  # fmt: skip
            for i, smp in enumerate(samples)
        ]


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
    With ``shards`` > 1, only the flows of ``shard`` (``flows.shard_of``)."""  # fmt: skip
    table = FlowTable(spec, rules)
    run.flow_stats = table.stats
    for chunk in _chunks(table.block_samples(read_blocks(path, run.capture), shard, shards), size):
        data, direction = encode_samples(chunk, spec)
        for smp in chunk:
            if smp.handshake is None:  # the flow table records it for the flows it builds
                smp.handshake = tcp_handshake_completed(smp.frames)
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
) -> ScoreRun:
    """Score every flow of a capture, streaming: verdict JSON lines go to ``out`` as batches finish.

    ``workers`` > 1 splits the flows into that many shards, each read, grouped, encoded and scored by its
    own process (``_shard_worker``); their verdicts merge back in the order one process writes them.
    """
    run = ScoreRun()

    def emit(vs: Sequence[Verdict], lines: Sequence[str] | None = None) -> None:
        """Account verdicts; from shards, ``lines`` holds every verdict's line and ``vs`` all verdicts
        only if ``on_verdicts`` wants them (else the flagged ones)."""
        run.flows += len(vs) if lines is None else len(lines)
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
            emit(scorer.verdicts_encoded(samples, data, direction))
        return run
    _score_sharded(path, scorer, emit, batch_size, rules, workers, on_verdicts is not None, run)
    return run


# --- sharded scoring (dpack score on several cores) ------------------------------------------------------


def _shard_worker(
    conn: Connection, path: str | os.PathLike[str], scorer: Scorer, size: int, rules: FlowRules | None,
    shard: int, shards: int, send_all: bool,
) -> None:  # fmt: skip
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
    path: str | os.PathLike[str], scorer: Scorer, emit: Any, size: int, rules: FlowRules | None, shards: int,
    send_all: bool, run: ScoreRun,
) -> None:  # fmt: skip
    next(iter(read_capture(path)), None)  # a file that cannot be read fails here, with its one-line error
    ctx = mp.get_context("fork")  # the children share the loaded model; nothing to import or pickle
    conns, procs = [], []
    for shard in range(shards):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_shard_worker, daemon=True, name=f"dpack-score-{shard}",
                           args=(child, path, scorer, size, rules, shard, shards, send_all))  # fmt: skip
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

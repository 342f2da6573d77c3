"""Scoring: flow samples -> verdicts (score, threshold, anomalous, explanation), offline and live alike."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import torch

from .capture import CaptureStats, read_capture
from .dataset import encode_samples
from .flows import DEFAULT_IDLE_TIMEOUT, FlowSample, FlowStats, FlowTable
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
    handshake: bool = False  # TCP handshake completed (packets.tcp_handshake_completed); not in the JSON
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


def explain_rows(
    model: LoadedModel, x: torch.Tensor, data: np.ndarray, direction: np.ndarray, top_k: int = 3
) -> list[list[str]]:
    """For each flow, the ``top_k`` input fields that raised the score most, as ``p<slot>.<field>``.

    A field's weight is the sum of the positive attributions of its bytes; a packet's ``direction`` and,
    for an empty slot, ``absent`` (the missing packet itself is the evidence) are fields too.
    """
    b = len(x)
    if b == 0:
        return []
    n, length = model.spec.n_packets, model.spec.n_bytes
    attr = model.net.attribution(x).numpy()  # (B, 2, N*L)
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


class Scorer:
    """Scores batches of flow samples with one loaded model."""

    def __init__(self, model: LoadedModel, explain: str = "anomalous", top_k: int = 3) -> None:
        if explain not in EXPLAIN_MODES:
            raise ValueError(f"explain must be one of {EXPLAIN_MODES}")
        self.model = model
        self.explain = explain
        self.top_k = top_k
        self.name = model.name

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
        x = to_input(data, direction)
        with torch.no_grad():
            s = self.model.net.score(x).numpy()
        thr = self.model.threshold
        flagged = s > thr
        explanations: dict[int, list[str]] = {}
        if self.explain != "none":
            idx = np.arange(len(s)) if self.explain == "all" else np.flatnonzero(flagged)
            if len(idx):
                rows = explain_rows(self.model, x[idx], data[idx], direction[idx], self.top_k)
                explanations = dict(zip(idx.tolist(), rows, strict=True))
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
                explanations.get(i, []),
                smp.uid,
                bool(smp.handshake if smp.handshake is not None else tcp_handshake_completed(smp.frames)),
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
    path: str | os.PathLike[str], spec: PrefixSpec, idle_timeout: float, size: int, run: ScoreRun
) -> Iterator[tuple[list[FlowSample], np.ndarray, np.ndarray]]:
    """Read, group into flows and encode a capture: chunks of (samples without frames, data, direction)."""
    table = FlowTable(spec, idle_timeout)
    run.flow_stats = table.stats
    for chunk in _chunks(table.samples(read_capture(path, run.capture)), size):
        data, direction = encode_samples(chunk, spec)
        for smp in chunk:
            if smp.handshake is None:  # the flow table records it for the flows it builds
                smp.handshake = tcp_handshake_completed(smp.frames)
            smp.frames = []  # encoded; no need to keep the bytes
        yield chunk, data, direction


def score_capture(
    path: str | os.PathLike[str],
    scorer: Scorer,
    out: IO[str] | None = None,
    batch_size: int = 4096,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    keep_top: int = 10,
    on_verdicts: Any = None,
) -> ScoreRun:
    """Score every flow of a capture, streaming: verdict JSON lines go to ``out`` as batches finish."""
    run = ScoreRun()
    for samples, data, direction in _encoded_chunks(path, scorer.model.spec, idle_timeout, batch_size, run):
        vs = scorer.verdicts_encoded(samples, data, direction)
        run.flows += len(vs)
        flagged = [v for v in vs if v.anomalous]
        run.flagged += len(flagged)
        if flagged:
            run.top = sorted(run.top + flagged, key=lambda v: -v.score)[:keep_top]
        if out is not None:
            out.write("".join(json.dumps(v.to_dict(), separators=(",", ":")) + "\n" for v in vs))
        if on_verdicts is not None:
            on_verdicts(vs)
    return run

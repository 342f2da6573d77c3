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
from .packets import field_names

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
        return d


def explain_rows(
    model: LoadedModel, x: torch.Tensor, data: np.ndarray, direction: np.ndarray, top_k: int = 3
) -> list[list[str]]:
    """For each flow, the ``top_k`` input fields that raised the score most, as ``p<slot>.<field>``."""
    if len(x) == 0:
        return []
    attr = model.net.attribution(x).numpy()  # (B, 2, N*L)
    n, length = model.spec.n_packets, model.spec.n_bytes
    out = []
    for i in range(len(x)):
        a = attr[i, 0].reshape(n, length)  # (N, L) bytes
        d = attr[i, 1].reshape(n, length).sum(axis=1)  # (N,) direction channel, per packet
        per_field: dict[str, float] = {}
        for j in range(n):
            if direction[i, j] == 0:  # no packet: the absence itself is the evidence
                per_field[f"p{j + 1}.absent"] = float(np.clip(a[j], 0, None).sum() + max(d[j], 0.0))
                continue
            per_field[f"p{j + 1}.direction"] = float(d[j])
            names = field_names(data[i, j])
            for k in np.flatnonzero(a[j] > 0):
                key = f"p{j + 1}.{names[k]}"
                per_field[key] = per_field.get(key, 0.0) + float(a[j, k])
        ranked = sorted(per_field.items(), key=lambda kv: -kv[1])
        out.append([name for name, v in ranked[:top_k] if v > 0])
    return out


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
        if not samples:
            return []
        data, direction = encode_samples(samples, self.model.spec)
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
    table = FlowTable(scorer.model.spec, idle_timeout)
    run.flow_stats = table.stats

    def samples() -> Iterator[FlowSample]:
        for ts, lt, fr in read_capture(path, run.capture):
            yield from table.add(ts, lt, fr)
        yield from table.flush()

    for chunk in _chunks(samples(), batch_size):
        vs = scorer.verdicts(chunk)
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

"""Scoring flow samples with a loaded prefix model: verdicts with scores, thresholds and explanations,
the same offline and live."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from ..context.stage import failed_rows
from ..traffic import handshake
from ..traffic.fields import FIELD_NAMES, field_layout
from ..traffic.flows import FlowSample
from ..verdict import EXPLAIN_MODES, Verdict
from .flowset import FlowSet, encode_samples
from .model import to_input
from .modelfile import LoadedModel

log = logging.getLogger(__name__)


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
    ranked = np.take_along_axis(top, order, axis=1).tolist()
    positive = (np.take_along_axis(vals, order, axis=1) > 0).tolist()
    names = [*FIELD_NAMES, "direction", "absent"]
    return [
        [f"p{c // v + 1}.{names[c % v]}" for c, ok in zip(row, keep, strict=True) if ok]
        for row, keep in zip(ranked, positive, strict=True)
    ]


def _handshake(smp: FlowSample) -> bool:
    return smp.handshake if smp.handshake is not None else handshake.from_frames(smp.frames)


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
        distinct_scores = np.empty(len(keys), dtype=np.float32)  # float32, as the model returns them
        explained: list[list[str]] = [[]] * len(keys)
        for j, hit in enumerate(known):
            if hit is not None:
                distinct_scores[j], explained[j] = hit
                cache.move_to_end(keys[j])
        if todo:
            sel = first[todo]
            new_data, new_direction = data[sel], direction[sel]
            x = to_input(new_data, new_direction)
            if self.explain == "none":
                with torch.no_grad():
                    distinct_scores[todo] = self.model.net.score(x).numpy()
            else:  # a flagged flow's score and explanation from one forward pass
                scores, attribution = self.model.net.scored(x)
                fresh = scores.numpy()
                distinct_scores[todo] = fresh
                idx = np.arange(len(todo)) if self.explain == "all" else np.flatnonzero(fresh > thr)
                if len(idx):
                    rows = explain_rows(
                        self.model, x[idx], new_data[idx], new_direction[idx], self.top_k, attribution(idx)
                    )
                    for t, row in zip(idx.tolist(), rows, strict=True):
                        explained[todo[t]] = row
            if self.cache_size:
                for j in todo:
                    cache[keys[j]] = (float(distinct_scores[j]), explained[j])
                while len(cache) > self.cache_size:
                    cache.popitem(last=False)
        s = distinct_scores[inverse]
        flagged = s > thr
        inv = inverse.tolist()
        failed = failed_rows(data, direction).tolist()
        out = [
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
                failed=failed[i],
            )
            for i, smp in enumerate(samples)
        ]
        return out


def sensor_order(samples: Sequence[FlowSample]) -> np.ndarray:
    """Indices of ``samples`` in the order a sensor decides them: by the time each flow's verdict is due,
    then its first packet (what the host-context stage's histories need)."""
    return np.array(
        sorted(range(len(samples)), key=lambda i: (samples[i].ready, samples[i].ts)), dtype=np.int64
    )


def verdicts_in_sensor_order(
    scorer: Scorer, flows: FlowSet, chunk: int = 8192
) -> tuple[np.ndarray, list[Verdict]]:
    """(``sensor_order`` of a flow set, its prefix verdicts in that order), scored ``chunk`` at a time."""
    order = sensor_order(flows.samples)
    vs: list[Verdict] = []
    for a in range(0, len(order), chunk):
        sl = order[a : a + chunk]
        vs += scorer.verdicts_encoded([flows.samples[i] for i in sl], flows.data[sl], flows.direction[sl])
    return order, vs


def in_flow_order(order: np.ndarray, verdicts: Sequence[Verdict]) -> list[Verdict]:
    """Verdicts listed in ``order`` (``sensor_order``) put back in the flow set's own order."""
    out: list[Verdict] = list(verdicts)
    for k, i in enumerate(order.tolist()):
        out[i] = verdicts[k]
    return out

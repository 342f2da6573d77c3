"""Score drift: the scores of a service's unflagged flows against the model's benign baseline.

**Drift.** A model trained by ``dpack train`` (and so by learning mode) carries the deciles of its
benign calibration scores per service (``score_baseline``). Every ``serve.drift_window`` unflagged flows
of a service, the share of them in each decile bin is compared with the baseline's share (population
stability index, PSI); above ``serve.drift_psi`` (0.25: the usual "significant shift") the service has
drifted: a warning in the log, the counter ``drift_alarms``, a ``DPack::Model_Drift`` notice in Zeek,
and the advice to relearn. Said once per service until a window is back under half the limit. A window of
2,000 flows from the same distribution has a PSI of about 0.005 (9 / 2,000), so noise stays silent.
Flagged flows are left out: an attack must not look like drift, nor drift hide behind alarms.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..verdict import Verdict, service_key

log = logging.getLogger(__name__)

BASELINE_MIN_FLOWS = 200  # calibration flows a service needs for a baseline of its own
MAX_SERVICES = 256  # services watched at most (the busiest of the baseline, and "*" for the others)


Baseline = dict[str, tuple[np.ndarray, np.ndarray]]  # service -> (bin edges, expected share per bin)


def _bins(edges: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return np.searchsorted(edges, scores, side="right")


def score_baseline(scores: np.ndarray, services: Sequence[str], threshold: float) -> dict[str, Any]:
    """Per service with ``BASELINE_MIN_FLOWS`` benign calibration flows under the threshold (the busiest
    ``MAX_SERVICES``), and ``*`` for the other services together: bin edges at the scores' deciles and the share of the flows in
    each bin (not a tenth each: a service whose flows are alike has tied scores and fewer bins)."""
    keep = scores <= threshold
    scores, sv = scores[keep], np.asarray(services)[keep]

    def entry(s: np.ndarray) -> dict[str, list[float]]:
        edges = np.unique(np.quantile(s, np.linspace(0.1, 0.9, 9), method="inverted_cdf"))  # real scores
        share = np.bincount(_bins(edges, s), minlength=len(edges) + 1) / len(s)
        return {"edges": edges.tolist(), "expected": share.tolist()}

    out: dict[str, Any] = {}
    rest = np.ones(len(scores), dtype=bool)
    names, counts = np.unique(sv, return_counts=True)
    for name in names[np.argsort(-counts, kind="stable")][: MAX_SERVICES - 1]:
        sel = sv == name
        if sel.sum() >= BASELINE_MIN_FLOWS:
            out[str(name)] = entry(scores[sel])
            rest &= ~sel
    if rest.sum() >= BASELINE_MIN_FLOWS:
        out["*"] = entry(scores[rest])  # the services without a baseline of their own, together
    return out


def checked_baseline(raw: Any) -> Baseline:
    """The model file's ``score_baseline``, or {} when it has none or it does not hold (at most nine)
    ascending finite edges and their shares per service (drift watching is then off; the model serves)."""
    out: Baseline = {}
    if not isinstance(raw, dict):
        return out
    for k, v in list(raw.items())[:MAX_SERVICES]:
        try:
            edges = np.asarray(v["edges"], dtype=np.float64)
            share = np.asarray(v["expected"], dtype=np.float64)
        except (TypeError, ValueError, KeyError, IndexError):
            return {}
        if not (
            isinstance(k, str)
            and edges.ndim == 1
            and 1 <= len(edges) <= 9
            and share.shape == (len(edges) + 1,)
            and np.isfinite(edges).all()
            and (np.diff(edges) > 0).all()
            and np.isfinite(share).all()
            and (share >= 0).all()
            and abs(share.sum() - 1) < 1e-6
        ):
            return {}
        out[k] = (edges, share)
    return out


def psi(counts: np.ndarray, expected: np.ndarray) -> float:
    """Population stability index of bin counts against the expected shares (a share of 0 counts as
    half a flow on either side, so that an empty bin does not make it infinite)."""
    n = max(float(counts.sum()), 1.0)
    got = np.maximum(counts / n, 0.5 / n)
    exp = np.maximum(expected, 0.5 / n)
    return float(np.sum((got - exp) * np.log(got / exp)))


class DriftWatch:
    """Unflagged scores per service against the model's baseline; ``add`` returns new alarms."""

    def __init__(self, baseline: Baseline, window: int = 2000, limit: float = 0.25) -> None:
        self.baseline, self.window, self.limit = baseline, window, limit
        # per service: its bin edges as a list (bisect: a scalar numpy call per flow cost more than the
        # rest of the check), and its window's counts per bin and in all
        self.edges = {k: e.tolist() for k, (e, _) in baseline.items()}
        self.counts: dict[str, list[int]] = {}
        self.n: dict[str, int] = {}
        self.drifted: dict[str, float] = {}  # service -> PSI of the window that raised its alarm
        self.last: dict[str, float] = {}  # service -> PSI of its last full window

    def add(self, verdicts: Sequence[Verdict]) -> list[tuple[str, str]]:
        """(service, message) for each service whose window just drifted; clears recovered ones."""
        if not self.baseline:
            return []
        out = []
        for v in verdicts:
            if v.anomalous or not math.isfinite(v.score):
                continue
            key = service_key(v.proto, v.dport)
            if key not in self.baseline:
                key = "*"
                if key not in self.baseline:
                    continue
            c = self.counts.get(key)
            if c is None:
                c = self.counts[key] = [0] * (len(self.edges[key]) + 1)
                self.n[key] = 0
            c[bisect.bisect_right(self.edges[key], v.score)] += 1  # numpy's searchsorted(side="right")
            self.n[key] += 1
            if self.n[key] < self.window:
                continue
            expected = self.baseline[key][1]
            p = self.last[key] = psi(np.array(c), expected)
            share_high, expected_high = c[-1] / self.n[key], expected[-1]
            c[:] = [0] * len(c)
            self.n[key] = 0
            if p > self.limit and key not in self.drifted:
                self.drifted[key] = p
                out.append((key, (
                    f"{key}: scores of unflagged flows drifted from the model's baseline (PSI {p:.2f} > "
                    f"{self.limit:g} over {self.window} flows; {share_high:.0%} above the baseline's 90th "
                    f"percentile, expected {expected_high:.0%}): the site changed or the model no longer fits it; relearn "
                    "(learn.enabled: true) if the change is benign"
                )))  # fmt: skip
            elif p < self.limit / 2 and key in self.drifted:
                del self.drifted[key]
                log.info("drift: %s is back near the model's baseline (PSI %.2f)", key, p)
        return out

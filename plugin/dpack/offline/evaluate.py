"""Evaluation: score labelled flows and report detection metrics, per attack family, with plots.

Labels come either from the capture sets (``--benign``/``--attack``; families from a ``NAME.labels.csv``
beside each capture when there is one, else the file name) or from a labels CSV in the lab-dev format
(one row per flow, keyed by the initiator's 5-tuple and first timestamp).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..prefix.flowset import FlowSet, extract
from ..prefix.scorer import Scorer, in_flow_order, verdicts_in_sensor_order
from ..traffic.labels import labels_beside, read_labels, sample_key
from ..verdict import Verdict

log = logging.getLogger(__name__)


@dataclass
class Labelled:
    flows: FlowSet
    is_attack: np.ndarray  # (F,) bool
    family: list[str]
    unlabelled: int


def labelled_sets(benign: Sequence[str], attack: Sequence[str], spec: Any) -> Labelled:
    sets, attacks, fams = [], [], []
    unlabelled = 0
    for paths, is_attack in ((benign, False), (attack, True)):
        for p in paths:
            fs = extract([p], spec)
            beside = labels_beside(p)
            labels = read_labels(beside) if beside else {}
            default = ("attack" if is_attack else "benign") if not labels else None
            keep = []
            for i, s in enumerate(fs.samples):
                lab = labels.get(sample_key(s))
                if lab is None and default is None:
                    unlabelled += 1
                    continue
                keep.append(i)
                fams.append(lab[1] if lab else Path(p).name.split(".")[0])
                attacks.append(is_attack)
            sets.append(fs.subset(np.array(keep, dtype=np.int64)))
    return Labelled(_concat(sets), np.array(attacks, dtype=bool), fams, unlabelled)


def labelled_pcap(pcap: str, labels_csv: str, spec: Any) -> Labelled:
    labels = read_labels(labels_csv)
    fs = extract([pcap], spec)
    keep, attacks, fams = [], [], []
    for i, s in enumerate(fs.samples):
        lab = labels.get(sample_key(s))
        if lab is None:
            continue
        keep.append(i)
        attacks.append(lab[0])
        fams.append(lab[1])
    unlabelled = len(fs) - len(keep)
    return Labelled(fs.subset(np.array(keep, dtype=np.int64)), np.array(attacks, bool), fams, unlabelled)


def _concat(sets: list[FlowSet]) -> FlowSet:
    return FlowSet(
        np.concatenate([s.data for s in sets]),
        np.concatenate([s.direction for s in sets]),
        [x for s in sets for x in s.samples],
    )


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties counted half)."""
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([neg, pos]), kind="mergesort")
    allv = np.concatenate([neg, pos])[order]
    ranks = np.empty(len(allv))
    # average ranks over ties
    _, first, counts = np.unique(allv, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks_sorted = np.repeat(avg, counts)
    ranks[order] = ranks_sorted
    r_pos = ranks[len(neg) :].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def metrics(
    y: np.ndarray, scores: np.ndarray, threshold: float, family: list[str], pred: np.ndarray | None = None
) -> dict[str, Any]:
    """``pred``: the decisions, when they are not ``scores > threshold`` (the host-context stage)."""
    pred = scores > threshold if pred is None else pred
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    tn = int((~pred & ~y).sum())
    fn = int((~pred & y).sum())
    n = len(y)

    def div(a: float, b: float) -> float:
        return float(a / b) if b else 0.0

    precision = div(tp, tp + fp)
    recall = div(tp, tp + fn)
    per_family: dict[str, dict[str, int]] = {}
    for f, p in zip(family, pred, strict=True):
        e = per_family.setdefault(f, {"flows": 0, "detected": 0})
        e["flows"] += 1
        e["detected"] += int(p)
    return {
        "flows": n,
        "accuracy": div(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "f1": div(2 * precision * recall, precision + recall),
        "fpr": div(fp, fp + tn),
        "fnr": div(fn, fn + tp),
        "auc": roc_auc(y, scores),
        "threshold": float(threshold),
        "per_family": dict(sorted(per_family.items())),
    }


def evaluate(scorer: Scorer, data: Labelled) -> tuple[dict[str, Any], np.ndarray]:
    scores = np.concatenate(
        [
            scorer.scores(data.flows.data[i : i + 8192], data.flows.direction[i : i + 8192])
            for i in range(0, len(data.flows), 8192)
        ]
        or [np.zeros(0, np.float32)]
    )
    return metrics(data.is_attack, scores, scorer.model.threshold, data.family), scores


def format_headline(m: dict[str, Any]) -> str:
    return (
        f"accuracy {m['accuracy']:.4f}  precision {m['precision']:.4f}  recall {m['recall']:.4f}  "
        f"f1 {m['f1']:.4f}\nfpr {m['fpr']:.4f}  fnr {m['fnr']:.4f}  auc {m['auc']:.4f}"
    )


def format_table(m: dict[str, Any], attack_families: set[str]) -> str:
    lines = [
        f"flows {m['flows']}  threshold {m['threshold']:.6g}",
        format_headline(m),
        "",
        f"{'family':<24} {'kind':<7} {'flows':>7} {'flagged':>8} {'share':>7}",
    ]
    for fam, e in m["per_family"].items():
        kind = "attack" if fam in attack_families else "benign"
        share = e["detected"] / e["flows"] if e["flows"] else 0.0
        lines.append(f"{fam:<24} {kind:<7} {e['flows']:>7} {e['detected']:>8} {share:>7.2%}")
    return "\n".join(lines)


STAGES = ("prefix", "context", "combined")


def evaluate_stages(model: Any, data: Labelled) -> tuple[dict[str, dict[str, Any]], list[Verdict]]:
    """The prefix model alone, the host-context stage alone (its score without the prefix column) and
    the shipped combination, on the labelled flows in the order a sensor sees them (by the time each
    flow's verdict is due, then first packet): host histories run across benign and attack captures.
    Also returns the combined verdicts (what dpack decides), in ``data``'s order."""
    from ..context.stage import decide_copies

    # scored once; each context stage decides copies of them
    order, prefix = verdicts_in_sensor_order(Scorer(model, explain="none"), data.flows)
    y = data.is_attack[order]
    fam = [data.family[i] for i in order.tolist()]
    scores = np.array([v.score for v in prefix])
    out = {"prefix": metrics(y, scores, model.threshold, fam)}
    out["prefix"]["until_flagged"] = until_flagged(prefix, scores > model.threshold, fam)
    for stage in STAGES[1:]:
        vs = decide_copies(model.context, prefix, use_prefix=stage == "combined")
        scores = np.array([v.context_score for v in vs])
        pred = np.array([v.anomalous for v in vs])
        out[stage] = metrics(y, scores, model.context.threshold, fam, pred)
        out[stage]["until_flagged"] = until_flagged(vs, pred, fam)
    return out, in_flow_order(order, vs)  # vs: the last stage's, "combined"


def until_flagged(
    vs: Sequence[Verdict], pred: np.ndarray, family: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per family: its originators, how many of them had a flow flagged, and over those the median number
    of the host's flows of the family before its first flagged one and the seconds from its first flow
    to then (what an analyst waits: from then on the host has a Notice and, under the rules policy, a rule)."""
    first: dict[tuple[str, str], list[Any]] = {}  # (family, src) -> [flows seen, first ts, flows before, s]
    for v, p, f in zip(vs, pred.tolist(), family, strict=True):
        e = first.setdefault((f, v.src), [0, v.ts, None, None])
        if p and e[2] is None:
            e[2], e[3] = e[0], v.ts - e[1]
        e[0] += 1
    out: dict[str, dict[str, Any]] = {}
    for (f, _), (_, _, before, secs) in sorted(first.items()):
        d = out.setdefault(f, {"hosts": 0, "flagged_hosts": 0, "_n": [], "_s": []})
        d["hosts"] += 1
        if before is not None:
            d["flagged_hosts"] += 1
            d["_n"].append(before)
            d["_s"].append(secs)
    for d in out.values():
        n, sec = d.pop("_n"), d.pop("_s")
        d["flows_before_first_flag"] = float(np.median(n)) if n else None
        d["seconds_to_first_flag"] = round(float(np.median(sec)), 3) if sec else None
    return out


def format_stages(res: dict[str, dict[str, Any]], attack_families: set[str]) -> str:
    fams = sorted(res["prefix"]["per_family"])
    lines = [
        f"{'family':<24} {'flows':>7}  " + "  ".join(f"{s:>9}" for s in STAGES) + "  combined: hosts flagged,"
        " median flows (s) before the first flag"
    ]
    for f in fams:
        n = res["prefix"]["per_family"][f]["flows"]
        cells = []
        for s in STAGES:
            d = res[s]["per_family"][f]["detected"]
            share = d / n if n else 0.0
            cells.append(f"{share:>9.2%}" if f in attack_families else f"{share:>8.2%}*")
        u = res["combined"].get("until_flagged", {}).get(f)
        if u:
            cells.append(f"{u['flagged_hosts']}/{u['hosts']}")
            if u["flows_before_first_flag"] is not None:
                cells.append(f"{u['flows_before_first_flag']:g} ({u['seconds_to_first_flag']:g} s)")
        lines.append(f"{f:<24} {n:>7}  " + "  ".join(cells))
    lines.append(f"{'FPR (all benign)':<24} {'':>7}  " + "  ".join(f"{res[s]['fpr']:>9.3%}" for s in STAGES))
    lines.append(
        f"{'detection (all attacks)':<24} {'':>7}  " + "  ".join(f"{res[s]['recall']:>9.2%}" for s in STAGES)
    )
    lines.append("* benign: the share flagged (false alarms)")
    return "\n".join(lines)

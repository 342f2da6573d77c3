"""``dpack evaluate --report DIR``: one page an analyst can read and forward (``DIR/index.html``), with
its plots beside it (``roc.png``, ``pr.png``, ``scores.png``) and everything in ``report.json``.

What it says, top to bottom: the model (name, what it learned from, its card), the captures and the
date; the headline figures at the operating point dpack uses (with a host-context stage: the combined
decision); the confusion matrix; each attack family's detection and each benign family's false alarms
(by stage when the model has a context stage); benign flows and false alarms per service; the plots
(ROC on a log false-positive axis from one benign flow up, with the operating point marked; precision-
recall; score histogram with the threshold); the ten benign flows with the highest scores that were
flagged (false alarms) and the ten attack flows that were missed, each with what made its score.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..fileio import atomic_write_bytes
from ..verdict import Verdict, fold_services, service_key
from . import html_page as H

TOP = 10
SMALL_SERVICE = 20  # benign flows below which a service is shown with the others of its protocol


def _plots(
    d: Path, y: np.ndarray, scores: np.ndarray, threshold: float, op: tuple[float, float]
) -> dict[str, Any]:
    """The three PNGs; returns what the ROC plot shows of its axes and operating point (report.json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-scores, kind="mergesort")
    ys = y[order]
    tps, fps = np.cumsum(ys), np.cumsum(~ys)
    n_pos, n_neg = max(1, int(ys.sum())), max(1, int((~ys).sum()))
    tpr, fpr = tps / n_pos, fps / n_neg
    lo = 1.0 / n_neg  # one benign flow: the smallest false-positive rate this capture can show
    fig, ax = plt.subplots(figsize=(5.2, 4))
    ax.plot(np.maximum(fpr, lo), tpr, label="ROC")
    ax.plot([max(op[0], lo)], [op[1]], "o", c="C3", label=f"operating point (threshold {threshold:.4g})")
    ax.set_xscale("log")
    ax.set_xlim(lo, 1.0)
    ax.set_ylim(0, 1.02)
    roc = {"x_scale": ax.get_xscale(), "x_limits": list(ax.get_xlim()), "operating_point": [max(op[0], lo), op[1]],
           "labels": [t.get_text() for t in ax.legend().get_texts()]}  # fmt: skip
    ax.set(
        xlabel=f"false-positive rate (log; left edge: 1 of {n_neg:,} benign flows)", ylabel="detection rate"
    )
    ax.set_title("ROC of the prefix score")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(d / "roc.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.2, 4))
    ax.plot(tpr, tps / np.arange(1, len(ys) + 1))
    ax.set(
        xlabel="recall (detection rate)",
        ylabel="precision",
        title="precision-recall",
        xlim=(0, 1.02),
        ylim=(0, 1.02),
    )
    fig.tight_layout()
    fig.savefig(d / "pr.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.2, 4))
    pos = scores[scores > 0]
    low = max(float(pos.min()) if len(pos) else 1e-6, 1e-8)
    bins = np.logspace(np.log10(low), np.log10(max(float(scores.max()), low * 10)), 60).tolist()
    ax.hist(np.maximum(scores[~y], low), bins=bins, alpha=0.6, label="benign flows")
    ax.hist(np.maximum(scores[y], low), bins=bins, alpha=0.6, label="attack flows")
    ax.axvline(threshold, c="k", ls="--", label=f"threshold {threshold:.4g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="prefix anomaly score (log)", ylabel="flows (log)", title="score histogram")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(d / "scores.png", dpi=100)
    plt.close(fig)
    return {"roc": roc}


def _flow_rows(vs: Sequence[Verdict], family: Sequence[str]) -> list[list[Any]]:
    return [
        [time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.ts)), f"{v.src}:{v.sport}", f"{v.dst}:{v.dport}",
         v.proto, f, v.score, ", ".join(v.explanation) or "-"]
        for v, f in zip(vs, family, strict=True)
    ]  # fmt: skip


def write_report(
    out_dir: str | os.PathLike[str],
    model: Any,
    data: Any,
    scores: np.ndarray,
    decided: Sequence[Verdict] | None,
    m: dict[str, Any],
    captures: Sequence[str],
) -> list[Path]:
    """The page and its plots. ``decided``: every flow's final verdict in ``data``'s order (the host-context
    stage's, when it ran), else the prefix decision ``scores > threshold`` is the operating point."""
    from ..prefix.scorer import Scorer

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    y = np.asarray(data.is_attack, dtype=bool)
    fam = list(data.family)
    samples = data.flows.samples
    pred = np.array([v.anomalous for v in decided]) if decided is not None else scores > model.threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    tn, fn = int((~pred & ~y).sum()), int((~pred & y).sum())
    op = (fp / max(1, fp + tn), tp / max(1, tp + fn))
    plots = _plots(d, y, scores, model.threshold, (m["fpr"], m["recall"]))  # the prefix threshold's point
    stage = "prefix model and host-context stage (combined)" if decided is not None else "prefix model"
    # the flows to show, with what made their scores (explanations of the stage where it decided)
    fa = [i for i in np.argsort(-scores, kind="stable").tolist() if pred[i] and not y[i]][:TOP]
    miss = [i for i in np.argsort(-scores, kind="stable").tolist() if y[i] and not pred[i]][:TOP]
    pick = fa + miss
    explained = Scorer(model, explain="all").verdicts_encoded(
        [samples[i] for i in pick], data.flows.data[pick], data.flows.direction[pick]
    ) if pick else []  # fmt: skip
    shown = []
    for i, v in zip(pick, explained, strict=True):
        if decided is not None and decided[i].explanation:
            v.explanation = list(decided[i].explanation)
        shown.append(v)
    per_service: dict[str, list[int]] = {}
    for i in np.flatnonzero(~y).tolist():
        s = service_key(samples[i].proto_name, samples[i].dport)
        e = per_service.setdefault(s, [0, 0])
        e[0] += 1
        e[1] += int(pred[i])
    per_service = fold_services(per_service, SMALL_SERVICE)
    # per family at the operating point: evaluate's metrics of the deciding stage hold it already
    attack = {f for f, a in zip(fam, y.tolist(), strict=True) if a}
    per_family = (m["stages"]["combined"] if decided is not None else m)["per_family"]
    families = {f: [e["flows"], e["detected"], int(f in attack)] for f, e in per_family.items()}
    card = model.meta.get("provenance", {}) if isinstance(model.meta.get("provenance"), dict) else {}
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    head = [
        ("model", model.name),
        ("learned from", model.learned_from),
        ("decisions by", stage),
        ("captures", ", ".join(os.path.basename(c) for c in captures)),
        ("report made", f"{created} by dpack {__version__}"),
    ]
    n_att, n_ben = int(y.sum()), int((~y).sum())
    headline = [
        ("flows", f"{len(y):,} ({n_ben:,} benign, {n_att:,} attack)"),
        ("attack flows detected", f"{op[1]:.2%} ({tp:,} of {n_att:,})"),
        ("benign flows flagged (false-positive rate)", f"{op[0]:.3%} ({fp:,} of {n_ben:,})"),
        ("precision (flagged flows that are attacks)", f"{tp / max(1, tp + fp):.2%}"),
        ("prefix threshold / ROC AUC", f"{model.threshold:.4g} / {m.get('auc', float('nan')):.4f}"),
    ]
    parts: list[tuple[str, str]] = [
        ("", H.facts(head)),
        ("At the operating point dpack uses", H.facts(headline)),
    ]
    parts.append(("Confusion", H.table(
        ["", "flagged", "not flagged"], [["attack flows", tp, fn], ["benign flows", fp, tn]]
    )))  # fmt: skip
    fam_rows = [
        [f, "attack" if a else "benign", n, k, f"{k / max(1, n):.2%}" + ("" if a else " (false alarms)")]
        for f, (n, k, a) in sorted(families.items(), key=lambda x: (-x[1][2], x[0]))
    ]
    parts.append(("Per family", H.table(["family", "label", "flows", "flagged", "share flagged"], fam_rows)))
    if "stages" in m:
        st = m["stages"]
        rows = []
        for f in sorted(st["prefix"]["per_family"]):
            n = st["prefix"]["per_family"][f]["flows"]
            cells = [
                f"{st[s]['per_family'][f]['detected'] / max(1, n):.2%}"
                for s in ("prefix", "context", "combined")
            ]
            u = st["combined"].get("until_flagged", {}).get(f, {})
            after = u.get("flows_before_first_flag")
            rows.append([f, n, *cells, f"{u.get('flagged_hosts', 0)}/{u.get('hosts', 0)}", "-" if after is None else f"{after:g} flow{'' if after == 1 else 's'} ({u['seconds_to_first_flag']:g} s)"])  # fmt: skip
        parts.append(("By stage (share flagged)", H.table(
            ["family", "flows", "prefix alone", "host context alone", "combined", "hosts flagged", "median wait for the first flag"], rows
        )))  # fmt: skip
    svc_rows = [
        [s, n, k, f"{k / max(1, n):.2%}"]
        for s, (n, k) in sorted(per_service.items(), key=lambda x: -x[1][0])[:30]
    ]
    parts.append(
        ("Benign flows per service", H.table(["service", "benign flows", "false alarms", "share"], svc_rows))
    )
    parts.append(("Plots", H.figure("roc.png", "ROC: detection against false-positive rate; the dot is the prefix threshold")
                  + H.figure("pr.png", "precision against recall, over all thresholds")
                  + H.figure("scores.png", "scores of benign and attack flows; dashed: the threshold")))  # fmt: skip
    cols = [
        "first packet (UTC)",
        "originator",
        "responder",
        "proto",
        "family",
        "score",
        "what made the score",
    ]
    parts.append((f"Top {len(fa)} false alarms (benign flows flagged, highest score first)",
                  H.table(cols, _flow_rows(shown[: len(fa)], [fam[i] for i in fa])) if fa else H.para("none")))  # fmt: skip
    parts.append((f"Top {len(miss)} misses (attack flows not flagged, highest score first)",
                  H.table(cols, _flow_rows(shown[len(fa):], [fam[i] for i in miss])) if miss else H.para("none")))  # fmt: skip
    parts.append(("Explanations", H.para(
        "p2.tcp.flags: the TCP flags of the flow's second packet; pN.absent: the flow had fewer than N "
        "packets; pN.direction: who sent packet N; pN.payload[k]: byte k of its payload; host.*: the "
        "originator's recent past (docs/manual.md, 'Reading an explanation')."
    )))  # fmt: skip
    if card:
        parts.append(("Model card", H.facts((k, json.dumps(v, default=str) if isinstance(v, dict | list) else v) for k, v in card.items())))  # fmt: skip
    page = H.page(f"dpack evaluation: {model.name}", parts)
    atomic_write_bytes(d / "index.html", page.encode())
    summary = {"model": model.name, "captures": list(captures), "created": created, "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn}, "plots": plots, "metrics": m}  # fmt: skip
    atomic_write_bytes(d / "report.json", (json.dumps(summary, indent=1, default=str) + "\n").encode())
    return [d / "roc.png", d / "pr.png", d / "scores.png", d / "report.json", d / "index.html"]

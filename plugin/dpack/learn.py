"""Learning a site: train every configured detector on a recording of its benign traffic (or any capture
of it), validate on the held-back last part as ``dpack serve`` would decide it, refuse with a reason,
and report (JSON and an HTML page beside the model). The live learner (``serve/learning.py``) runs this
in a background process; ``dpack train --validate`` runs it in the foreground: one code path."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path
from typing import Any

from .traffic.encode import PrefixSpec
from .verdict import Verdict, fold_services


def _pcap_header(linktype: int) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)


def pcap_record(ts: float, frame: bytes) -> bytes:
    """One classic-pcap record (microseconds; a time that rounds up to the next second stays in its own)."""
    sec = int(ts)
    usec = min(999_999, int(round((ts - sec) * 1e6)))
    return struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame


def learn_from(
    recording: str | os.PathLike[str],
    out: str | os.PathLike[str],
    provenance: dict[str, Any] | None = None,
    held_back: float = 0.2,
    target_fpr: float = 0.005,
    max_fpr: float = 0.01,
    min_flows: int = 1000,
    spec: PrefixSpec | None = None,
    context: bool = True,
    min_service_flows: int = 50,
) -> dict[str, Any]:
    """Learn a model from a recorded (or any benign) capture: ``dpack train`` on its first part (and the
    host-context stage on the same part, with ``context``), the held-back last part scored for the
    validation as ``dpack serve`` would decide it; writes ``out`` only if it passes, and the learning
    report (``OUT.report.json`` and ``.html``) either way. The same for the live learner and for
    ``dpack train --validate``. Refused: too few flows; a service that is a real part of the held-back
    traffic but was learned from fewer than ``min_service_flows`` flows; held-back FPR above ``max_fpr``."""
    import tempfile
    from collections import Counter

    import numpy as np

    from .prefix.flowset import extract
    from .prefix.modelfile import load_model
    from .prefix.scorer import Scorer, in_flow_order, verdicts_in_sensor_order
    from .prefix.train import TrainOptions, train
    from .verdict import service_key

    spec = spec or PrefixSpec()  # the serving model's prefix: what Zeek exports
    fs = extract([str(recording)], spec)
    n = len(fs)
    report: dict[str, Any] = {
        "recording": os.path.basename(str(recording)),
        "provenance": provenance or {},
        "flows": {"recorded": n},
    }
    if n and not report["provenance"].get("period"):  # offline: the capture's own period
        t = [s.ts for s in fs.samples]
        report["provenance"] = {**report["provenance"], "period": [min(t), max(t)]}

    def refused(reason: str, **more: Any) -> dict[str, Any]:
        res = {"ok": False, "reason": reason, **more}
        write_learning_report(out, {**report, **res})
        return res

    if n < min_flows:
        return refused(f"too few flows to learn from ({n}, at least {min_flows})")
    # by time: the flows that start in the last ``held_back`` of the period are held back
    starts = np.array([s.ts for s in fs.samples])
    cut = float(np.quantile(starts, 1 - held_back))
    learn_idx, rest = np.flatnonzero(starts < cut), np.flatnonzero(starts >= cut)
    services = [service_key(s.proto_name, s.dport) for s in fs.samples]
    learned, back = Counter(services[i] for i in learn_idx), Counter(services[i] for i in rest)
    report["flows"] |= {"learned": int(len(learn_idx)), "held_back": int(len(rest))}
    for svc, k in back.most_common():
        if k >= max(20, 0.01 * len(rest)) and learned[svc] < min_service_flows:
            return refused(
                f"service {svc}: {learned[svc]} flows learned, {k} in the held-back part (at least "
                f"{min_service_flows} needed, learn.min_service_flows): record longer or at a busier time"
            )
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(out))) as d:
        part = Path(d) / "learn.pcap"
        _write_before(recording, part, cut)
        tmp_model = Path(d) / "model.pt"
        summary = train([part], tmp_model, TrainOptions(spec=spec, target_fpr=target_fpr, name="site-model"))
        prefix_only = tmp_model
        if context:
            from .offline.context_fit import fit_context

            fit_context(load_model(tmp_model), [part], Path(d) / "ctx.pt", target_fpr=target_fpr)
            tmp_model = Path(d) / "ctx.pt"
        model = load_model(tmp_model)
        # the prefix scored once: the stage's model and the prefix-only one share the network and threshold
        order, prefix = verdicts_in_sensor_order(Scorer(model, explain="none"), fs)
        vs = _decided(model, order, prefix)
        flagged = np.array([v.anomalous for v in vs])
        prefix_flagged = np.array([v.score > model.threshold for v in vs])
        fpr = float(flagged[rest].mean()) if len(rest) else 1.0
        alone = float(prefix_flagged[rest].mean()) if len(rest) else 1.0
        if model.context is not None and fpr > min(max_fpr, alone + target_fpr):
            # the stage does not hold on the held-back part (the site's hosts changed their habits over the
            # period): the site model goes without it rather than with its false alarms, and says so
            report["context_left_out"] = (
                f"the host-context stage flagged {fpr:.2%} of the held-back flows, the prefix model alone "
                f"{alone:.2%}: learned without the stage (record a longer period to learn the hosts' habits)"
            )
            tmp_model = prefix_only
            model = load_model(tmp_model)
            vs = in_flow_order(order, prefix)
            flagged = prefix_flagged
            fpr = alone
        report |= _learned(model, fs, vs, services, learned, back, learn_idx, rest, flagged, prefix_flagged)
        if fpr > max_fpr:
            return refused(
                f"held-back false-positive rate {fpr:.4f} is above learn.max_fpr {max_fpr}", heldback_fpr=fpr
            )
        import torch

        blob = torch.load(tmp_model, weights_only=True)
        blob["provenance"] = {
            **blob.get("provenance", {}),
            **report["provenance"],
            "heldback_fpr": fpr,
            "heldback_flows": len(rest),
        }
        from .modelio import save_blob

        save_blob(out, blob)
    res = {
        "ok": True,
        "heldback_fpr": fpr,
        "heldback_flows": int(len(rest)),
        "train_flows": summary["flows"]["train"],
        "context": model.context is not None,
        **({"context_left_out": report["context_left_out"]} if "context_left_out" in report else {}),
    }
    write_learning_report(out, {**report, **res, "model": {"path": os.path.basename(str(out))}})
    return res


def _decided(model: Any, order: Any, prefix: list[Verdict]) -> list[Verdict]:
    """The flows' verdicts as ``dpack serve`` decides them: the host-context stage over copies of the
    prefix verdicts (in sensor order) when the model has one, back in the flow set's order."""
    from .context.stage import decide_copies
    from .prefix.scorer import in_flow_order

    return in_flow_order(order, decide_copies(model.context, prefix) if model.context is not None else prefix)


def _learned(
    model: Any, fs: Any, vs: list[Verdict], services: list[str], learned: Any, back: Any,
    learn_idx: Any, rest: Any, flagged: Any, prefix_flagged: Any,
) -> dict[str, Any]:  # fmt: skip
    """The learning report's figures: services, thresholds, held-back rates, the most unusual flows."""
    import numpy as np

    from .prefix.scorer import Scorer

    back_flagged: dict[str, int] = {}
    for i in rest.tolist():
        back_flagged[services[i]] = back_flagged.get(services[i], 0) + int(flagged[i])
    counts = {s: [learned[s] + back[s], learned[s], back[s], back_flagged.get(s, 0)] for s in learned + back}
    rows = [
        {"service": s, "learned": c[1], "held_back": c[2], "held_back_flagged": c[3]}
        for s, c in list(fold_services(counts, 20).items())[:40]
    ]
    scores = np.array([v.score for v in vs])
    top = learn_idx[np.argsort(-scores[learn_idx], kind="stable")[:10]]
    explained = Scorer(model, explain="all").verdicts_encoded(
        [fs.samples[i] for i in top], fs.data[top], fs.direction[top]
    )
    return {
        "thresholds": {
            "prefix": model.threshold,
            "context": model.context.threshold if model.context is not None else None,
        },
        "heldback": {
            "fpr_prefix_alone": float(prefix_flagged[rest].mean()) if len(rest) else None,
            "fpr": float(flagged[rest].mean()) if len(rest) else None,
        },
        "services": rows,
        "unusual": [
            {
                "ts": v.ts,
                "src": v.src,
                "dst": v.dst,
                "service": services[i],
                "score": v.score,
                "explanation": v.explanation,
            }
            for i, v in zip(top.tolist(), explained, strict=True)
        ],  # fmt: skip
        "model": {"name": model.name, "learned_from": model.learned_from},
        "model_card": model.meta.get("provenance", {}),
    }


def report_paths(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The learning report beside the model file: ``site-model.report.json`` and ``.html``."""
    p = Path(out)
    stem = p.with_suffix("") if p.suffix else p
    return stem.with_name(stem.name + ".report.json"), stem.with_name(stem.name + ".report.html")


def write_learning_report(out: str | os.PathLike[str], rep: dict[str, Any]) -> None:
    """JSON (everything) and one HTML page an analyst can read, written atomically."""
    from .fileio import atomic_write_bytes
    from .offline import html_page as H

    jpath, hpath = report_paths(out)
    atomic_write_bytes(jpath, (json.dumps(rep, indent=1, default=str) + "\n").encode())
    prov = rep.get("provenance", {})
    head = [
        ("result", "model learned" if rep.get("ok") else f"refused: {rep.get('reason', '')}"),
        ("site", prov.get("site") or "-"),
        ("recording", rep.get("recording", "")),
        ("period", " to ".join(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) for t in prov.get("period") or [] if t)),
        ("flows recorded / learned / held back", " / ".join(str(rep.get("flows", {}).get(k, "-")) for k in ("recorded", "learned", "held_back"))),
    ]  # fmt: skip
    th, hb = rep.get("thresholds", {}), rep.get("heldback", {})
    if th:
        head += [
            ("prefix threshold", th.get("prefix")),
            (
                "host-context threshold",
                th.get("context")
                if th.get("context") is not None
                else rep.get("context_left_out", "no stage"),
            ),
            ("held-back FPR, prefix alone", hb.get("fpr_prefix_alone")),
            ("held-back FPR, as served", hb.get("fpr")),
        ]
    parts = [
        ("", H.para("model learned" if rep.get("ok") else "refused", "ok" if rep.get("ok") else "bad")),
        ("", H.facts(head)),
    ]
    if rep.get("services"):
        parts.append(("Flows per service", H.table(
            ["service", "learned", "held back", "held back, flagged"],
            [[r["service"], r["learned"], r["held_back"], r["held_back_flagged"]] for r in rep["services"]],
        )))  # fmt: skip
    if rep.get("unusual"):
        parts.append(("The most unusual benign flows it learned from", H.table(
            ["time (UTC)", "originator", "responder", "service", "score", "what made the score"],
            [[time.strftime("%H:%M:%S", time.gmtime(u["ts"])), u["src"], u["dst"], u["service"], u["score"], ", ".join(u["explanation"])] for u in rep["unusual"]],
        )))  # fmt: skip
    if rep.get("model_card"):
        card = rep["model_card"]
        parts.append(
            (
                "Model card",
                H.facts(
                    (k, json.dumps(v, default=str) if isinstance(v, dict | list) else v)
                    for k, v in card.items()
                ),
            )
        )
    atomic_write_bytes(hpath, H.page("dpack learning report", parts).encode())


def _write_before(capture: str | os.PathLike[str], part: Path, cut: float) -> None:
    """The frames of ``capture`` captured before ``cut``, as a pcap (the training part)."""
    from .traffic.capture import CaptureStats, read_capture

    frames = [(ts, lt, fr) for ts, lt, fr in read_capture(capture, CaptureStats()) if ts < cut]
    linktype = frames[0][1] if frames else 1
    out = bytearray(_pcap_header(linktype))
    for ts, lt, fr in frames:
        if lt != linktype:
            continue
        out += pcap_record(ts, fr)
    part.write_bytes(bytes(out))

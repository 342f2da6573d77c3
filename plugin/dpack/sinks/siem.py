"""The SIEM feed: one JSON line per verdict, in Elastic Common Schema field names.

Anomalous verdicts are alerts (``event.kind: alert``); with ``serve.alerts_all`` the others are written
too, as ``event.kind: event`` with ``event.outcome`` and no ``rule`` fields. The file is opened in append
mode for every batch, so logrotate's move-and-create and copytruncate both work; a failed write is
logged and counted by the caller, never fatal.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..verdict import CONNECTION_DETECTORS, Verdict

log = logging.getLogger(__name__)

RULE_NAME = "DPack::Anomalous_Flow"
CONNECTION_RULE_NAME = "DPack::Anomalous_Connection"
DESCRIPTIONS = {
    "prefix": "first packets of the flow are unlike the benign traffic the model learned",
    "records": "the connection's summary is unlike the benign connections the model learned",
    "classifier": "the connection classifier assigns an attack category",
    "context": "an ordinary-looking flow, unlike what its originator's benign history allows (host context)",
}


def risk_score(score: float, threshold: float) -> float:
    """0-100: 50 at the threshold, growing with score/threshold, capped at 100."""
    if threshold <= 0:
        return 100.0 if score > 0 else 0.0
    return round(min(100.0, 50.0 * score / threshold), 1)


def ecs_record(v: Verdict, node: str = "", now: float | None = None) -> dict[str, Any]:
    ts = _dt.datetime.fromtimestamp(now if now is not None else v.ts, _dt.UTC)
    rec: dict[str, Any] = {
        "@timestamp": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "event": {
            "kind": "alert" if v.anomalous else "event",
            "category": ["network", "intrusion_detection"],
            "type": ["info"],
            "module": "dpack",
            "dataset": "dpack.verdict",
            "risk_score": risk_score(v.score, v.threshold),
            "start": _dt.datetime.fromtimestamp(v.ts, _dt.UTC)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
        },
        "source": {"ip": v.src, "port": v.sport},
        "destination": {"ip": v.dst, "port": v.dport},
        "network": {"transport": v.proto, "community_id": v.community_id},
        "observer": {"product": "dpack", "version": __version__, "type": "ids"},
        "dpack": {
            "score": v.score,
            "threshold": v.threshold,
            "anomalous": v.anomalous,
            "model": v.model,
            "explanation": v.explanation,
            "detector": v.detector,
        },
    }
    if v.category:
        rec["dpack"]["category"] = v.category
        rec["dpack"]["confidence"] = round(v.confidence, 4)
    if v.anomalous:
        conn = v.detector in CONNECTION_DETECTORS
        rec["rule"] = {
            "name": CONNECTION_RULE_NAME if conn else RULE_NAME,
            "ruleset": "dpack",
            "version": v.model,
            "description": DESCRIPTIONS.get(v.detector, ""),
        }
        what = "connection" if conn else "flow"
        rec["message"] = f"dpack: anomalous {what} {v.src}:{v.sport} -> {v.dst}:{v.dport}/{v.proto}"
        if v.category:
            # ECS rule.category: the detection's category; here the classifier's attack category
            rec["rule"]["category"] = v.category
            rec["message"] += f" ({v.category}, p={v.confidence:.2f})"
    if v.uid:
        rec["zeek"] = {"uid": v.uid}
    if node:
        rec["observer"]["name"] = node
    return rec


class AlertFeed:
    """Appends ECS records to a JSON-lines file."""

    def __init__(self, path: str, all_verdicts: bool = False) -> None:
        self.path = path
        self.all_verdicts = all_verdicts
        self.written = 0

    def write(self, verdicts: Sequence[Verdict], nodes: Sequence[str], now: float) -> int:
        """Append the records for ``verdicts``; returns how many were written. Raises OSError on failure."""
        lines = [
            json.dumps(ecs_record(v, n, now), separators=(",", ":")) + "\n"
            for v, n in zip(verdicts, nodes, strict=True)
            if v.anomalous or self.all_verdicts
        ]
        if not lines:
            return 0
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            data = "".join(lines).encode()
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        finally:
            os.close(fd)
        self.written += len(lines)
        return len(lines)

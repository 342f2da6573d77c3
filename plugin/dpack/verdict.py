"""A verdict on one flow or connection: the ``Verdict`` type every detector returns and every sink reads.
Plain data, torch-free, so that sinks (SIEM feed, Suricata rules) and transports never load a model."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

EXPLAIN_MODES = ("anomalous", "all", "none")  # which verdicts carry an explanation
# detectors of finished connections (Zeek's DPack::connection_verdicts); the others decide flows at their
# first packets (DPack::verdicts): prefix, and context (the host-context stage flagged a flow)
CONNECTION_DETECTORS = frozenset({"records", "classifier"})


def sensor_millis(ts: float) -> int:
    """A time as Zeek's JSON carries it: whole milliseconds since the epoch, truncated (Broker's JSON
    encoder takes ``duration_cast<milliseconds>``, which rounds toward zero), so that offline and live
    runs see the same times. Through whole microseconds first: a float of seconds near 1.8e9 times 1000
    is off by up to 2.4e-4 ms, enough to floor an exact millisecond to the one before."""
    return round(ts * 1e6) // 1000


def service_key(proto: str, port: int) -> str:
    """A flow's service: its protocol name and responder port (``tcp/22``)."""
    return f"{proto}/{port}"


def fold_services(counts: dict[str, list[int]], least: int) -> dict[str, list[int]]:
    """Per-service counts (lists of the same length) with the services of fewer than ``least`` flows (the
    first count) added up per protocol under ``PROTO/other``: FTP data and one-off ports, for a table."""
    out: dict[str, list[int]] = {}
    for s, c in counts.items():
        key = s if c[0] >= least else f"{s.split('/')[0]}/other (services of < {least} flows)"
        e = out.setdefault(key, [0] * len(c))
        for j, x in enumerate(c):
            e[j] += x
    return dict(sorted(out.items(), key=lambda x: -x[1][0]))


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
    # prefix (D-PACK, first packets) | context (the host-context stage, at the same moment) | records |
    # classifier (connection summaries: CONNECTION_DETECTORS)
    detector: str = "prefix"
    category: str = ""  # the classifier's category of a connection, when one is configured
    confidence: float = 0.0  # the classifier's probability for that category
    # the prefix shows the flow failed (no answer, or a reset): host context; not in the JSON
    failed: bool = False
    # the host-context stage's score (summed benign tails), when the model has that stage; in the JSON then
    context_score: float | None = None
    # anomalous flows of its host within the rules' window, counted by the host-context stage (its host
    # key); the rules' escalation reads it instead of counting by address. Not in the JSON
    host_alarms: int | None = None

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
        if self.context_score is not None:
            d["context_score"] = float(f"{self.context_score:.6g}")
        if self.detector == "context":
            d["detector"] = self.detector
        elif self.detector != "prefix":
            d |= {
                "detector": self.detector,
                "category": self.category,
                "confidence": round(self.confidence, 4),
            }
        return d

    def to_json(self) -> str:
        """``json.dumps(self.to_dict(), separators=(",", ":"))``, built as text for prefix verdicts (the
        encoder's set-up per line cost a tenth of ``dpack score``'s time)."""
        if self.detector != "prefix" or self.context_score is not None:
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

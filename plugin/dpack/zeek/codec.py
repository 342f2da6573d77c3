"""The dpack contract over Zeek's messages: batches of samples and connection summaries in, verdicts and
refusals out (``contract.py`` declares the records; ``wire.py`` is the value encoding below it). Every
deviation raises ``CodecError`` with a short reason, which the service counts and logs; never fatal."""

from __future__ import annotations

import binascii
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import CodecError, one_line
from ..traffic.conn import ConnRecord
from ..traffic.encode import Frame
from ..traffic.flows import FlowSample
from ..traffic.keys import community_id
from ..traffic.packets import PROTO_ICMP, PROTO_ICMP6, PROTO_NAMES, PROTO_TCP, PROTO_UDP
from ..verdict import CONNECTION_DETECTORS
from ..zeek import contract as C
from .wire import (
    Event,
    Invalid,
    Port,
    _event_json,
    _record_json,
    _text,
    check_time,
    encode_event,
    encode_value,
)

_PORT_TRANSPORT = {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ICMP: "icmp", PROTO_ICMP6: "icmp"}


class ContractMismatch(CodecError):
    """A batch from a node that speaks another contract version (its header may have other fields):
    refused with a reason sent back to the node, not just counted."""

    def __init__(self, version: int, node: str, reply_topic: str) -> None:
        node = one_line(node, 60)
        super().__init__(f"contract version {version} from node {node!r}")
        self.version, self.node, self.reply_topic = version, node, reply_topic


# --- the dpack contract -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchHeader:
    version: int
    node: str
    reply_topic: str
    policy: str
    packets: int
    bytes: int
    max_wait: float
    sent: float


@dataclass
class SampleBatch:
    header: BatchHeader
    samples: list[FlowSample]
    skipped: list[str]  # one reason per sample left out


_FIELD_TYPES: dict[str, type] = {
    "count": int,
    "string": str,
    "real": float,
    "boolean": bool,
    "timestamp": float,
    "port": Port,
    "vector": list,
}


def _record(value: Any, fields: Sequence[tuple[str, str]], what: str) -> dict[str, Any]:
    if isinstance(value, Invalid):
        raise CodecError(f"{what}: {value.reason}")
    if not isinstance(value, list) or len(value) != len(fields):
        n = len(value) if isinstance(value, list) else "no"
        raise CodecError(f"{what}: expected a record of {len(fields)} fields, got {n}")
    out = {}
    checks = _FIELD_TYPES
    for (name, t), v in zip(fields, value, strict=True):
        if t == "address":
            ok = isinstance(v, ipaddress.IPv4Address | ipaddress.IPv6Address)
        else:
            ok = type(v) is checks[t] or (t == "count" and type(v) is int)
        if not ok:
            raise CodecError(f"{what}: field {name} is not a {t}")
        if t == "timestamp":  # both transports: Broker's times arrive as floats, not as ISO text
            check_time(v)
        out[name] = v
    return out


def _proto_number(rec: dict[str, Any]) -> int:
    """A record's IP protocol number, checked against its ports' transport (Zeek's ports say "icmp" for
    ICMPv6 too, and "unknown" for other protocols)."""
    proto = rec["proto"]
    want = _PORT_TRANSPORT.get(proto, "unknown")
    if not 0 <= proto <= 255 or rec["orig_p"].proto != want or rec["resp_p"].proto != want:
        raise CodecError(f"proto {str(proto)[:10]} does not fit ports {rec['orig_p'].wire()[:20]}")
    if (proto == PROTO_ICMP6) != (rec["orig_h"].version == 6) and proto in (PROTO_ICMP, PROTO_ICMP6):
        raise CodecError(f"proto {proto} does not fit address {_text(rec['orig_h'])[:40]}")
    return proto


def _sample(rec: dict[str, Any], max_packets: int) -> FlowSample:
    proto = _proto_number(rec)
    src, dst = rec["orig_h"], rec["resp_h"]
    pkts, dirs = rec["pkts"], rec["is_orig"]
    if len(pkts) != len(dirs):
        raise CodecError("pkts and is_orig differ in length")
    if len(pkts) > max_packets:
        raise CodecError(f"{len(pkts)} packets, more than {max_packets}")
    frames = []
    for p, d in zip(pkts, dirs, strict=True):
        if not isinstance(p, str) or type(d) is not bool:
            raise CodecError("pkts must be strings and is_orig booleans")
        if len(p) > C.MAX_FRAME_BYTES * 4 // 3 + 4:
            raise CodecError("packet larger than the contract allows")
        try:  # strict: only the base64 alphabet, correct padding, nothing after it
            raw = binascii.a2b_base64(p, strict_mode=True)
        except (binascii.Error, ValueError):
            raise CodecError("packet is not base64") from None
        frames.append(Frame(rec["link"], raw, d))
    sport, dport = rec["orig_p"].number, rec["resp_p"].number
    return FlowSample(
        rec["ts"],
        proto,
        _text(src),
        sport,
        _text(dst),
        dport,
        frames,
        uid=rec["uid"],
        community_id=community_id(proto, src.packed, dst.packed, sport, dport),
        ready=rec["ready"],
    )


def _batch(ev: Event, name: str, max_batch: int) -> tuple[BatchHeader, list[Any]]:
    if ev.name != name:
        raise CodecError(f"unexpected event {ev.name[:60]!r}")
    if len(ev.args) != 2:
        raise CodecError(f"{name} has {len(ev.args)} arguments, expected 2")
    head = ev.args[0]
    if isinstance(head, list) and len(head) >= 3 and type(head[0]) is int and head[0] != C.CONTRACT_VERSION:
        node, topic = (v if isinstance(v, str) else "?" for v in head[1:3])
        raise ContractMismatch(head[0], node, topic)
    hdr = BatchHeader(**_record(head, C.BATCH_HEADER, "batch header"))
    for k in ("node", "reply_topic", "policy"):  # they reach logs and refusals: short, one printable line
        text = getattr(hdr, k)
        if not 0 < len(text) <= C.MAX_TEXT or not text.isprintable():
            raise CodecError(f"batch header {k} is not a short printable string")
    batch = ev.args[1]
    if not isinstance(batch, list):
        raise CodecError("batch is not a vector")
    if len(batch) > max_batch:
        raise CodecError(f"batch of {len(batch)} entries is larger than {max_batch}")
    return hdr, batch


def parse_samples(ev: Event, max_batch: int = C.MAX_BATCH) -> SampleBatch:
    """A ``DPack::samples`` event -> header and flow samples; malformed samples are skipped with a reason,
    a malformed header or batch raises ``CodecError``."""
    hdr, batch = _batch(ev, C.SAMPLES_EVENT, max_batch)
    samples, skipped = [], []
    for i, value in enumerate(batch):
        try:
            samples.append(_sample(_record(value, C.SAMPLE, f"sample {i}"), C.MAX_PACKETS))
        except CodecError as err:
            skipped.append(str(err))
    return SampleBatch(hdr, samples, skipped)


@dataclass
class ConnectionBatch:
    header: BatchHeader
    records: list[ConnRecord]
    skipped: list[str]


def _connection(rec: dict[str, Any]) -> ConnRecord:
    pnum = _proto_number(rec)
    proto = PROTO_NAMES[pnum]
    src, dst = rec["orig_h"], rec["resp_h"]
    duration = rec["duration"]
    if not (0.0 <= duration < 1e9):  # also refuses NaN
        raise CodecError("duration out of range")
    for k in ("history", "conn_state", "service"):
        if len(rec[k]) > C.MAX_TEXT or not rec[k].isprintable():
            raise CodecError(f"{k} is not a short printable string")
    sport, dport = rec["orig_p"].number, rec["resp_p"].number
    return ConnRecord(
        rec["ts"],
        proto,
        str(src),
        sport,
        str(dst),
        dport,
        duration,
        rec["orig_pkts"],
        rec["resp_pkts"],
        rec["orig_bytes"],
        rec["resp_bytes"],
        rec["orig_ip_bytes"],
        rec["resp_ip_bytes"],
        rec["history"],
        rec["conn_state"],
        rec["service"],
        rec["uid"],
        community_id(pnum, src.packed, dst.packed, sport, dport),
    )


def parse_connections(ev: Event, max_batch: int = C.MAX_BATCH) -> ConnectionBatch:
    """A ``DPack::connections`` event -> header and connection records (malformed ones skipped)."""
    hdr, batch = _batch(ev, C.CONNECTIONS_EVENT, max_batch)
    recs, skipped = [], []
    for i, value in enumerate(batch):
        try:
            recs.append(_connection(_record(value, C.CONNECTION, f"connection {i}")))
        except CodecError as err:
            skipped.append(str(err))
    return ConnectionBatch(hdr, recs, skipped)


def _wire_proto(proto: str) -> str:
    return proto if proto in ("tcp", "udp") else ("icmp" if proto in ("icmp", "icmp6") else "unknown")


def encode_verdicts(
    topic: str, verdicts: Sequence[Any], sent: Sequence[float], latencies: Sequence[float]
) -> str:
    """A ``DPack::verdicts`` event for ``verdicts`` (``score.Verdict`` objects) on ``topic``; ``sent`` is
    each sample's batch header time (echoed), ``latencies`` the seconds each spent in the scorer.
    Verdicts on connection summaries (``CONNECTION_DETECTORS``) go as ``DPack::connection_verdicts``;
    a call takes one kind only. (A flow the host-context stage flagged is a flow verdict: sent as a
    connection verdict it lost its explanation, raised the wrong notice and, under DPack::score_traces,
    was never counted, so ``zeek -r`` waited for it forever.)"""
    connection = bool(verdicts) and verdicts[0].detector in CONNECTION_DETECTORS
    recs = []
    for v, t_sent, lat in zip(verdicts, sent, latencies, strict=True):
        proto = _wire_proto(v.proto)
        common = {
            "uid": v.uid,
            "orig_h": v.src,
            "orig_p": Port(v.sport, proto),
            "resp_h": v.dst,
            "resp_p": Port(v.dport, proto),
            "score": v.score,
            "threshold": v.threshold,
            "anomalous": v.anomalous,
            "model": v.model,
            "community_id": v.community_id,
            "sent": t_sent,
            "scorer_latency": lat,
        }
        if connection:
            common |= {"detector": v.detector, "category": v.category, "confidence": v.confidence}
            recs.append(_record_json(C.CONNECTION_VERDICT, common))
        else:
            recs.append(
                _record_json(
                    C.VERDICT, common | {"explanation": ",".join(v.explanation), "detector": v.detector}
                )
            )
    name = C.CONNECTION_VERDICTS_EVENT if connection else C.VERDICTS_EVENT
    return _event_json(topic, name, '{"@data-type":"vector","data":[' + ",".join(recs) + "]}")


def encode_refusal(topic: str, reason: str) -> str:
    return encode_event(topic, C.REFUSED_EVENT, [encode_value("string", reason)])


def encode_status(topic: str, kind: str, msg: str) -> str:
    return encode_event(topic, C.STATUS_EVENT, [encode_value("string", kind), encode_value("string", msg)])

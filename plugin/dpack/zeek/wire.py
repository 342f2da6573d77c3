"""Zeek WebSocket API messages (JSON v1 encoding) <-> Python values: the wire form, below the contract.

Built against frames recorded from Zeek 8.0.10 (``shared/zeek-wire``; replayed by ``tests/test_codec.py``):

* every value is ``{"@data-type": T, "data": V}``; records are vectors of their fields in order;
* an event is a data message whose ``data`` is ``[count 1, count 1, [name, [args...], metadata?]]``: in the
  recorded frames the metadata (e.g. the network timestamp) is the event body's optional third element
  (the fixture README places it as a fourth envelope element; both are accepted, and ignored);
* ``count`` can be 2**64-1 (parsed exactly: Python's json keeps integers exact);
* ``timestamp`` is ISO 8601 in UTC with millisecond precision;
* strings holding raw bytes arrive as invalid UTF-8 - which is why the contract sends packets base64.

Nothing here trusts its input: every deviation raises ``CodecError`` with a short reason, which the service
counts and logs; it is never fatal.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import ipaddress
import json
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import CodecError, FrameTooLarge
from ..verdict import sensor_millis
from .contract import CONNECTIONS_EVENT

# A text frame larger than this is refused before parsing. Zeek publishes a batch before its text would
# pass DPack::max_batch_text (3 MiB); the WebSocket accepts frames up to MAX_LINK_FRAME, so that one above
# the cap still arrives, and its flows are counted as dropped rather than the connection closed.
MAX_FRAME_TEXT = 4 * 1024 * 1024
MAX_LINK_FRAME = 4 * MAX_FRAME_TEXT


def too_large(raw: str | bytes) -> FrameTooLarge:
    """The refusal of an oversized frame, with the flows it carried counted from its text: every sample
    and connection summary has two ports (``orig_p``, ``resp_p``), and nothing else in a batch is one."""
    text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
    entries = (text.count('"@data-type":"port"') + text.count('"@data-type": "port"')) // 2
    counter = "connections_dropped" if f'"{CONNECTIONS_EVENT}"' in text[:4096] else "flows_dropped"
    return FrameTooLarge(f"frame of {len(raw)} bytes is larger than {MAX_FRAME_TEXT}", counter, entries)


_U64 = 2**64


@dataclass(frozen=True)
class Ack:
    endpoint: str
    version: str


@dataclass(frozen=True)
class ErrorReply:
    code: str
    context: str


@dataclass(frozen=True)
class Event:
    topic: str
    name: str
    args: list[Any]  # decoded values
    has_metadata: bool


PORT_PROTOS = ("tcp", "udp", "icmp", "unknown")  # what Zeek writes after a port number


@dataclass(frozen=True)
class Port:
    number: int
    proto: str  # "tcp", "udp", "icmp", "unknown"

    def wire(self) -> str:
        return f"{self.number}/{self.proto}"


Message = Ack | ErrorReply | Event


@dataclass(frozen=True)
class Invalid:
    """A vector inside a message that did not decode, with the reason. The rest of the message still
    decodes, so that the contract can skip (and count) one bad sample of a batch instead of the whole
    batch; where a whole record was expected (a batch header), the contract refuses the message."""

    reason: str


# --- values -------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)  # a batch's verdicts all echo the same ``sent`` time
def _ts_to_iso(ts: float) -> str:
    """Zeek's JSON form of a ``time``: ISO 8601, UTC, no zone, milliseconds (truncated, as Zeek's)."""
    ms = sensor_millis(ts)
    dt = _dt.datetime.fromtimestamp(ms // 1000, _dt.UTC).replace(tzinfo=None)
    return f"{dt.strftime('%Y-%m-%dT%H:%M:%S')}.{ms % 1000:03d}"


# The times a message may carry: 1970-01-01 to 9999-12-30 UTC, so that every one of them can be written
# back in Zeek's ISO form (a verdict echoes its batch's time; the SIEM feed writes a flow's) without
# leaving the calendar Python's datetime knows (years 1-9999).
TIME_RANGE = (0.0, 253_402_128_000.0)


def check_time(ts: float) -> float:
    if not TIME_RANGE[0] <= ts <= TIME_RANGE[1]:  # also refuses NaN
        raise CodecError(f"time {str(ts)[:24]} is outside 1970-9999")
    return ts


def _iso_to_ts(text: str) -> float:
    try:
        dt = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise CodecError(f"bad timestamp {text[:40]!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_dt.UTC)
    try:
        return check_time(dt.timestamp())
    except OverflowError:
        raise CodecError(f"bad timestamp {text[:40]!r}") from None


def _count(v: Any) -> int:
    if type(v) is not int or not 0 <= v < _U64:
        raise CodecError(f"bad count {str(v)[:30]}")
    return v


def _integer(v: Any) -> int:
    if type(v) is not int:
        raise CodecError(f"bad integer {str(v)[:30]}")
    return v


def _real(v: Any) -> float:
    if type(v) not in (int, float) or not math.isfinite(v):
        raise CodecError(f"bad real {str(v)[:30]}")
    return float(v)


def _boolean(v: Any) -> bool:
    if type(v) is not bool:
        raise CodecError("bad boolean")
    return v


def _string(v: Any) -> str:
    if type(v) is not str:
        raise CodecError("bad string")
    return v


_REMEMBERED = 65536  # entries per memo below: hostile traffic with ever new values cannot grow them further


def _remember(memo: dict[Any, Any], key: Any, value: Any) -> Any:
    """``memo[key] = value`` (the memo emptied first when full); returns ``value``."""
    if len(memo) >= _REMEMBERED:
        memo.clear()
    memo[key] = value
    return value


# Parsing is the slow part of a sample, and the same hosts and services come back again and again.
_ADDRS: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
_TEXTS: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str] = {}
_PORTS: dict[str, Port] = {}


def _address(v: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    a = _ADDRS.get(v) if type(v) is str else None
    if a is None:
        try:
            a = ipaddress.ip_address(v)
        except (ValueError, TypeError):
            raise CodecError(f"bad address {str(v)[:45]!r}") from None
        if getattr(a, "scope_id", None) is not None:  # Zeek's addr has no scope; a rule cannot hold one
            raise CodecError(f"address with a scope id {str(v)[:45]!r}")
        _remember(_ADDRS, v, a)
    return a


def _text(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """``str(a)``, the canonical text of an address."""
    t = _TEXTS.get(a)
    return t if t is not None else _remember(_TEXTS, a, str(a))


def _port(v: Any) -> Port:
    p = _PORTS.get(v) if type(v) is str else None
    if p is not None:
        return p
    if type(v) is not str or "/" not in v:
        raise CodecError(f"bad port {str(v)[:20]!r}")
    num, _, proto = v.partition("/")
    # ASCII digits only: str.isdigit() also takes superscripts and other scripts' digits, int() not all
    if not (num.isascii() and num.isdigit()) or len(num) > 5 or int(num) > 65535 or proto not in PORT_PROTOS:
        raise CodecError(f"bad port {v[:20]!r}")
    return _remember(_PORTS, v, Port(int(num), proto))


def _timestamp(v: Any) -> float:
    if type(v) is not str:
        raise CodecError("bad timestamp")
    return _iso_to_ts(v)


def _vector(v: Any) -> list[Any]:
    """A vector's elements, decoded. The common scalar types are decoded inline: a batch of samples is
    ~16 nodes per flow, and a call per node was the largest cost of the live path."""
    if type(v) is not list:
        raise CodecError("vector data is not a list")
    out: list[Any] = []
    append = out.append
    for node in v:
        if type(node) is not dict or "data" not in node:
            raise CodecError("value without @data-type/data")
        t, d = node.get("@data-type"), node["data"]
        if t == "string":
            if type(d) is not str:
                raise CodecError("bad string")
            append(d)
        elif t == "vector":
            try:
                append(_vector(d))
            except CodecError as err:  # one bad record of a batch: the contract skips it
                append(Invalid(str(err)))
        elif t == "boolean":
            if type(d) is not bool:
                raise CodecError("bad boolean")
            append(d)
        else:
            dec = _DECODERS.get(t) if type(t) is str else None
            if dec is None:
                raise CodecError(f"unsupported @data-type {str(t)[:20]!r}")
            append(dec(d))
    return out


_DECODERS: dict[str, Any] = {
    "vector": _vector,
    "count": _count,
    "integer": _integer,
    "real": _real,
    "boolean": _boolean,
    "string": _string,
    "address": _address,
    "port": _port,
    "timestamp": _timestamp,
    "none": lambda v: None,
}


def decode_value(node: Any) -> Any:
    """One ``{"@data-type", "data"}`` node -> Python value (vectors recursively)."""
    try:
        t, v = node["@data-type"], node["data"]
    except (KeyError, TypeError):
        raise CodecError("value without @data-type/data") from None
    dec = _DECODERS.get(t) if type(t) is str else None
    if dec is None:
        raise CodecError(f"unsupported @data-type {str(t)[:20]!r}")
    return dec(v)


def _wire_data(t: str, v: Any) -> Any:
    """Python value -> the ``data`` of wire type ``t`` (a JSON scalar)."""
    if t == "count":
        assert isinstance(v, int) and 0 <= v < _U64, v
        return v
    if t == "real":
        f = float(v)
        return f if math.isfinite(f) else 0.0
    if t == "boolean":
        return bool(v)
    if t in ("string", "address"):  # addresses: our own values (parsed sample, pcap header), canonical text
        return str(v)
    if t == "port":
        return v.wire() if isinstance(v, Port) else str(v)
    if t == "timestamp":
        return _ts_to_iso(float(v))
    raise ValueError(f"cannot encode wire type {t}")


def encode_value(t: str, v: Any) -> dict[str, Any]:
    """Python value -> ``{"@data-type", "data"}`` of wire type ``t``."""
    return {"@data-type": t, "data": _wire_data(t, v)}


_json_str = json.encoder.encode_basestring_ascii  # what json.dumps writes for a str (ensure_ascii)


def _json_scalar(x: Any) -> str:
    """``json.dumps(x)`` for the scalars ``_wire_data`` returns, without the encoder's set-up cost."""
    if type(x) is str:
        return _json_str(x)
    if x is True:
        return "true"
    if x is False:
        return "false"
    return repr(x)  # int; float (finite: _wire_data maps the rest to 0.0), as json.dumps writes it


def _record_json(fields: Sequence[tuple[str, str]], values: dict[str, Any]) -> str:
    """``json.dumps(encode_record(fields, values), separators=(",", ":"))``, built as text (hot path)."""
    items = (f'{{"@data-type":"{t}","data":{_json_scalar(_wire_data(t, values[n]))}}}' for n, t in fields)
    return '{"@data-type":"vector","data":[' + ",".join(items) + "]}"


def encode_record(fields: Sequence[tuple[str, str]], values: dict[str, Any]) -> dict[str, Any]:
    return {"@data-type": "vector", "data": [encode_value(t, values[name]) for name, t in fields]}


# --- messages -----------------------------------------------------------------------------------------


def decode_message(raw: str | bytes | dict[str, Any] | Event) -> Message:
    """One message as a link hands it on -> Ack, ErrorReply or Event: a WebSocket text frame, its parsed
    JSON (a scoring worker's part of a batch: ``decode_object``), or an ``Event`` the native Broker link
    converted already (returned as it is)."""
    if isinstance(raw, Event):
        return raw
    if isinstance(raw, dict):
        return decode_object(raw)
    if not isinstance(raw, str | bytes):
        raise CodecError(f"not a message: {type(raw).__name__}")
    if len(raw) > MAX_FRAME_TEXT:
        raise too_large(raw)
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CodecError("frame is not valid UTF-8 (raw bytes in a Zeek string?)") from None
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):
        raise CodecError("frame is not valid JSON") from None
    return decode_object(msg)


def decode_object(msg: Any) -> Message:
    """A frame's parsed JSON (``json.loads``) -> Ack, ErrorReply or Event, with every check of
    ``decode_message`` after the parse (the serving process hands parsed parts of a batch to workers)."""
    if not isinstance(msg, dict):
        raise CodecError("frame is not a JSON object")
    kind = msg.get("type")
    if kind == "ack":
        return Ack(str(msg.get("endpoint", "")), str(msg.get("version", "")))
    if kind == "error":
        return ErrorReply(str(msg.get("code", "")), str(msg.get("context", "")))
    if kind != "data-message":
        raise CodecError(f"unknown message type {str(kind)[:30]!r}")
    topic = msg.get("topic")
    if not isinstance(topic, str):
        raise CodecError("data message without topic")
    if msg.get("@data-type") != "vector" or not isinstance(msg.get("data"), list):
        raise CodecError("data message is not a vector")
    env = msg["data"]
    if len(env) not in (3, 4):
        raise CodecError(f"event envelope has {len(env)} elements, expected 3 or 4")
    if decode_value(env[0]) != 1 or decode_value(env[1]) != 1:
        raise CodecError("not an event (format/type are not 1/1)")
    body = env[2]
    if (
        not isinstance(body, dict)
        or body.get("@data-type") != "vector"
        or not isinstance(body.get("data"), list)
    ):
        raise CodecError("event body is not a vector")
    if len(body["data"]) not in (2, 3):
        raise CodecError(f"event body has {len(body['data'])} elements, expected name, arguments, metadata")
    name = decode_value(body["data"][0])
    if not isinstance(name, str):
        raise CodecError("event name is not a string")
    args_node = body["data"][1]
    if not isinstance(args_node, dict) or args_node.get("@data-type") != "vector":
        raise CodecError("event arguments are not a vector")
    args = decode_value(args_node)
    return Event(topic, name, args, len(env) == 4 or len(body["data"]) == 3)


def batch_entries(ev: Event) -> list[Any] | None:
    """The entries of a batch event (header, entries) before any checks of them; None if not shaped so."""
    return ev.args[1] if len(ev.args) == 2 and isinstance(ev.args[1], list) else None


def _orig_h(entry: Any) -> str:
    """A batch entry's originator address as it came (JSON node or Broker value), unchecked: only for
    dealing entries by host; "" when the entry is not shaped like a sample (it is refused later)."""
    try:
        v = entry["data"][1]["data"] if isinstance(entry, dict) else entry[1]
    except (KeyError, IndexError, TypeError):
        return ""
    return v if isinstance(v, str) else str(v)


def split_by_host(msg: Any, parts: int, host_of: Callable[[str], str]) -> list[Any] | None:
    """Like ``split_batch``, but entry by entry to part ``crc32(host) % parts``: every flow of one host
    goes to the same part, always (the host-context stage keeps per-host state in each worker); parts
    may be empty."""

    def part(entry: Any) -> int:
        addr = _orig_h(entry)
        try:
            key = host_of(addr)
        except ValueError:
            key = addr
        return zlib.crc32(key.encode("utf-8", "replace")) % parts

    def deal(batch: list[Any]) -> list[list[Any]]:
        cut: list[list[Any]] = [[] for _ in range(parts)]
        for e in batch:
            cut[part(e)].append(e)
        return cut

    return _cut(msg, deal)


def split_batch(msg: Any, parts: int) -> list[Any] | None:
    """A parsed samples or connections message (``json.loads`` of a frame, or an ``Event``) cut into up
    to ``parts`` messages of consecutive entries of its batch, each with the same header (the same input
    always gives the same cut); None if it is not shaped like one or has fewer than two entries. Nothing
    is checked here: every part gets all the codec's checks when it is decoded."""
    return _cut(msg, lambda batch: _chunks(batch, parts) if min(parts, len(batch)) >= 2 else None)


def _cut(msg: Any, chunker: Callable[[list[Any]], list[list[Any]] | None]) -> list[Any] | None:
    """``msg`` as one message per chunk of its batch's entries (``chunker``; None: not to be cut)."""
    if isinstance(msg, Event):
        batch = batch_entries(msg)
        chunks = chunker(batch) if batch is not None else None
        return None if chunks is None else [dataclasses.replace(msg, args=[msg.args[0], c]) for c in chunks]
    try:
        body = msg["data"][2]
        args = body["data"][1]
        batch = args["data"][1]["data"]
    except (KeyError, IndexError, TypeError):
        return None
    chunks = chunker(batch) if isinstance(batch, list) else None
    if chunks is None:
        return None
    out = []
    for chunk in chunks:  # shallow copies along the path to the batch
        a = dict(args, data=[args["data"][0], dict(args["data"][1], data=chunk), *args["data"][2:]])
        b = dict(body, data=[body["data"][0], a, *body["data"][2:]])
        out.append(dict(msg, data=[*msg["data"][:2], b, *msg["data"][3:]]))
    return out


def _chunks(items: list[Any], parts: int) -> list[list[Any]]:
    k = min(parts, len(items))
    size, extra = divmod(len(items), k)
    cuts = [i * size + min(i, extra) for i in range(k + 1)]
    return [items[cuts[i] : cuts[i + 1]] for i in range(k)]


def encode_event(topic: str, name: str, args: list[dict[str, Any]]) -> str:
    """An event as a data message (compact JSON, no metadata element), ready to send."""
    return _event_json(topic, name, ",".join(json.dumps(a, separators=(",", ":")) for a in args))


def _event_json(topic: str, name: str, args_json: str) -> str:
    """The data message of an event whose arguments are already JSON text (comma separated)."""
    return (
        f'{{"type":"data-message","topic":{_json_str(topic)},"@data-type":"vector","data":['
        '{"@data-type":"count","data":1},{"@data-type":"count","data":1},'
        f'{{"@data-type":"vector","data":[{{"@data-type":"string","data":{_json_str(name)}}},'
        f'{{"@data-type":"vector","data":[{args_json}]}}]}}]}}'
    )

"""A WebSocket peer on 127.0.0.1 that behaves like Zeek 8.0's WebSocket API with the dpack scripts loaded.

It is the stand-in for Zeek where Zeek cannot be installed (the btest suite in zeek_scripts/tests runs the
real thing where it can). What it sends is built the way ``zeek_scripts/main.zeek`` builds it - per
connection the first N packets under the prefix policy, each frame cut to ``capture_bytes`` and
base64-encoded, batched with a ``BatchHeader`` - and encoded as Zeek 8.0.10 encodes events (compact JSON,
keys in Zeek's order, the metadata element with the network timestamp, as in shared/zeek-wire). What it
receives it checks as Zeek would: unknown events, wrong argument counts or types get Zeek's error frame.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from websockets.asyncio.server import serve

from dpack.traffic.capture import read_capture
from dpack.traffic.encode import PrefixSpec
from dpack.traffic.flows import FlowTable
from dpack.zeek import contract as C
from dpack.zeek.wire import Port, _ts_to_iso, decode_message, encode_record

ERR_EVENT = {"type": "error", "code": "deserialization_failed", "context": "failed to create Zeek event"}
ERR_JSON = {"type": "error", "code": "deserialization_failed", "context": "failed to decode JSON object"}
ERR_TOPIC = {
    "type": "error",
    "code": "deserialization_failed",
    "context": "no topic in top-level JSON object",
}


def zeek_json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def uid() -> str:
    return "C" + secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")[:17]


def samples_from_pcap(
    path: str, packets: int = 3, policy: str = "payload", capture_bytes: int = 128, limit: int | None = None
) -> list[dict[str, Any]]:
    """Sample records as main.zeek's ``emit`` builds them (frames from the link layer, cut, base64)."""
    table = FlowTable(PrefixSpec(packets, 80, policy))
    out = []

    def take(samples: Iterable[Any]) -> None:
        for s in samples:
            proto = _transport(s.proto)
            out.append(
                {
                    "uid": uid(),
                    "orig_h": s.src,
                    "orig_p": Port(s.sport, proto),
                    "resp_h": s.dst,
                    "resp_p": Port(s.dport, proto),
                    "proto": s.proto,
                    "ts": s.ts,
                    "ready": s.ready,
                    "link": s.frames[0].linktype,
                    "pkts": [base64.b64encode(f.data[:capture_bytes]).decode() for f in s.frames],
                    "is_orig": [f.is_orig for f in s.frames],
                }
            )

    for ts, lt, fr in read_capture(path):
        take(table.add(ts, lt, fr))
        if limit and len(out) >= limit:
            return out[:limit]
    take(table.flush())
    return out[:limit] if limit else out


def _transport(proto: int) -> str:
    """The transport name of a port as Zeek writes it for an IP protocol number."""
    return {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}.get(proto, "unknown")


def sample_node(rec: dict[str, Any]) -> dict[str, Any]:
    node = encode_record(C.SAMPLE[:-2], rec)
    node["data"].append(
        {"@data-type": "vector", "data": [{"@data-type": "string", "data": p} for p in rec["pkts"]]}
    )
    node["data"].append(
        {"@data-type": "vector", "data": [{"@data-type": "boolean", "data": d} for d in rec["is_orig"]]}
    )
    return node


def connections_from_pcap(path: str) -> list[dict[str, Any]]:
    """Connection records as main.zeek's connection_state_remove handler builds them (the counts from the
    engine's flow table stand in for Zeek's own; the wire format is the point here)."""
    from dpack.records.features import records_from_capture

    out = []
    from dpack.records.features import PROTO_NUMBERS

    for r in records_from_capture(path):
        number = PROTO_NUMBERS.get(r.proto, 0)
        proto = _transport(number)
        out.append(
            {
                "uid": uid(),
                "orig_h": r.src,
                "orig_p": Port(r.sport, proto),
                "resp_h": r.dst,
                "resp_p": Port(r.dport, proto),
                "proto": number,
                "ts": r.ts,
                "duration": r.duration,
                "orig_pkts": r.orig_pkts,
                "resp_pkts": r.resp_pkts,
                "orig_bytes": r.orig_bytes,
                "resp_bytes": r.resp_bytes,
                "orig_ip_bytes": r.orig_ip_bytes,
                "resp_ip_bytes": r.resp_ip_bytes,
                "history": r.history,
                "conn_state": r.conn_state,
                "service": "",
            }
        )
    return out


def samples_frame(
    recs: list[dict[str, Any]],
    sent: float,
    topic: str = "dpack/samples/0",
    packets: int = 3,
    policy: str = "payload",
    nbytes: int = 80,
    version: int = C.CONTRACT_VERSION,
    reply_topic: str = "dpack/verdicts",
    node: str = "zeek",
    event: str = C.SAMPLES_EVENT,
    max_wait: float = 5.0,
) -> str:
    """One ``DPack::samples`` (or, with ``event=C.CONNECTIONS_EVENT``, ``DPack::connections``) data message
    exactly as Zeek 8.0 sends it (with the metadata element)."""
    hdr = encode_record(
        C.BATCH_HEADER,
        {
            "version": version,
            "node": node,
            "reply_topic": reply_topic,
            "policy": policy,
            "packets": packets,
            "bytes": nbytes,
            "max_wait": max_wait,
            "sent": sent,
        },
    )
    nodes = (
        [sample_node(r) for r in recs]
        if event == C.SAMPLES_EVENT
        else [encode_record(C.CONNECTION, r) for r in recs]
    )
    body = [
        {"@data-type": "string", "data": event},
        {"@data-type": "vector", "data": [hdr, {"@data-type": "vector", "data": nodes}]},
        {
            "@data-type": "vector",
            "data": [
                {
                    "@data-type": "vector",
                    "data": [
                        {"@data-type": "count", "data": 1},
                        {"@data-type": "timestamp", "data": _ts_to_iso(sent)},
                    ],
                }
            ],
        },
    ]
    return zeek_json(
        {
            "type": "data-message",
            "topic": topic,
            "@data-type": "vector",
            "data": [
                {"@data-type": "count", "data": 1},
                {"@data-type": "count", "data": 1},
                {"@data-type": "vector", "data": body},
            ],
        }
    )


EXPECTED_ARGS = {  # event -> its arguments: (data type, record fields of a vector's entries)
    C.VERDICTS_EVENT: [("vector", C.VERDICT)],
    C.REFUSED_EVENT: [("string", None)],
    C.CONNECTION_VERDICTS_EVENT: [("vector", C.CONNECTION_VERDICT)],
    C.STATUS_EVENT: [("string", None), ("string", None)],
}


def zeek_accepts(text: str) -> tuple[str, list[Any]] | dict[str, str]:
    """What Zeek does with a client message: (event name, args) or the error frame it answers with."""
    try:
        raw = json.loads(text)
    except ValueError:
        return ERR_JSON
    if not isinstance(raw, dict) or "topic" not in raw:
        return ERR_TOPIC
    try:
        ev = decode_message(text)
    except Exception:  # noqa: BLE001
        return ERR_EVENT
    if ev.name not in EXPECTED_ARGS or len(ev.args) != len(EXPECTED_ARGS[ev.name]):
        return ERR_EVENT
    for (kind, fields), arg in zip(EXPECTED_ARGS[ev.name], raw["data"][2]["data"][1]["data"], strict=True):
        if arg["@data-type"] != kind:
            return ERR_EVENT
        if fields is not None:
            for rec in arg["data"]:
                types = [f["@data-type"] for f in rec["data"]]
                if types != [t for _, t in fields]:
                    return ERR_EVENT
    return ev.name, ev.args


class ZeekPeer:
    """Runs in its own thread with its own event loop; the test drives it through thread-safe methods."""

    def __init__(self, check_on_receipt: bool = True) -> None:
        # check_on_receipt=False (benchmarks): store what arrives with its time and check it later, so the
        # peer's own work does not delay the receive times of the next messages.
        self.check_on_receipt = check_on_receipt
        self.raw: list[tuple[float, str]] = []
        self._seen = 0  # how much of ``raw`` verdict_times has read
        self._times: dict[str, float] = {}
        self.port = 0
        self.received: list[tuple[str, list[Any]]] = []
        self.received_at: list[float] = []  # time.perf_counter() of each entry of ``received``
        self.errors_sent = 0
        self.subscriptions: list[list[str]] = []
        self.clients: set[Any] = set()
        self.connected = threading.Event()
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.reading = asyncio.Event()  # cleared by pause_reading: what clients send waits unread
        self.reading.set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/messages/json"

    def start(self, port: int = 0) -> ZeekPeer:
        self._want_port = port
        self.thread.start()
        assert self._ready.wait(10), "peer did not start"
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self._server = await serve(
            self._handler, "127.0.0.1", self._want_port, compression=None, max_size=None
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handler(self, ws: Any) -> None:
        subs = json.loads(await ws.recv())
        self.subscriptions.append(subs)
        await ws.send(
            zeek_json({"type": "ack", "endpoint": f"{uuid.uuid4()}-websocket-0", "version": "8.0.10"})
        )
        self.clients.add(ws)
        self.connected.set()
        try:
            async for msg in ws:
                if not self.reading.is_set():
                    await self.reading.wait()
                if not self.check_on_receipt:
                    self.raw.append((time.perf_counter(), msg))
                    continue
                verdict = zeek_accepts(msg)
                if isinstance(verdict, dict):
                    self.errors_sent += 1
                    await ws.send(zeek_json(verdict))
                else:
                    with self.lock:
                        self.received.append(verdict)
                        self.received_at.append(time.perf_counter())
        except Exception:  # noqa: BLE001 - the client went away
            pass
        finally:
            self.clients.discard(ws)
            if not self.clients:
                self.connected.clear()

    def send(self, text: str | bytes, timeout: float = 10) -> None:
        """Send a frame (text, or raw bytes in a text frame as Zeek does) to every connected client."""

        async def go() -> None:
            for ws in list(self.clients):
                if isinstance(text, bytes):
                    await ws.send(text, text=True)
                else:
                    await ws.send(text)

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(timeout)

    def pause_reading(self, paused: bool) -> None:
        """Fault: stop reading what clients send (as a Zeek too busy to read). The socket's buffers fill,
        and the client's keepalive pings go unanswered too."""
        self.loop.call_soon_threadsafe(self.reading.clear if paused else self.reading.set)

    def send_all(self, frames: list[str], timeout: float = 600) -> None:
        """Send ``frames`` back to back to every client, with no round trip to the test's thread between
        them (a burst as fast as the socket takes it)."""

        async def go() -> None:
            for ws in list(self.clients):
                for f in frames:
                    await ws.send(f)

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(timeout)

    def drop_clients(self, timeout: float = 10) -> None:
        async def go() -> None:
            for ws in list(self.clients):
                await ws.close(1001, "zeek restarting")

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(timeout)

    def stop(self) -> None:
        async def go() -> None:
            self._server.close()
            for ws in list(self.clients):
                await ws.close(1001, "zeek stopping")
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def connection_verdicts(self) -> list[list[Any]]:
        with self.lock:
            return [
                rec for name, args in self.received if name == C.CONNECTION_VERDICTS_EVENT for rec in args[0]
            ]

    def verdicts(self) -> list[list[Any]]:
        with self.lock:
            return [rec for name, args in self.received if name == C.VERDICTS_EVENT for rec in args[0]]

    def verdict_times(self) -> dict[str, float]:
        """uid -> when its verdict event arrived (perf_counter)."""
        if not self.check_on_receipt:  # each stored message is checked once, on the first call after it came
            raw = self.raw[self._seen :]
            for t, msg in raw:
                got = zeek_accepts(msg)
                if not isinstance(got, dict) and got[0] == C.VERDICTS_EVENT:
                    self._times.update((rec[0], t) for rec in got[1][0])
            self._seen += len(raw)
            return dict(self._times)
        with self.lock:
            return {
                rec[0]: t
                for (name, args), t in zip(self.received, self.received_at, strict=True)
                if name == C.VERDICTS_EVENT
                for rec in args[0]
            }

    def refusals(self) -> list[str]:
        with self.lock:
            return [args[0] for name, args in self.received if name == C.REFUSED_EVENT]

    def statuses(self) -> list[tuple[str, str]]:
        """``DPack::scorer_status`` events: (kind, msg)."""
        with self.lock:
            return [(args[0], args[1]) for name, args in self.received if name == C.STATUS_EVENT]

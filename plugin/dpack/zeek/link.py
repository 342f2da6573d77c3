"""Transports between ``dpack serve`` and Zeek. Each one connects, subscribes to the sample topic, hands
every received message to a callback, sends what it is given, and reconnects with bounded backoff.

* ``WebSocketLink``: Zeek's WebSocket API, JSON v1 (any Zeek >= 6.0 with a listener). The primary link.
* ``BrokerLink``: native Broker peering (``zeek.transport: broker``, ``zeek.url: tcp://HOST:PORT``, Zeek's
  ``Broker::listen``, default port 9999) through the Python bindings that ship with the user's Zeek
  (``import broker``, else ``zeek-config --python_dir``). Broker's wire format only interoperates within
  one Broker version, so the bindings must come from the same Zeek build (Debian's ``python3-broker`` is
  Broker 1.4, which current Zeek cannot peer with; the tests use it against a Broker 1.4 peer).
  Events arrive as Broker values and are turned into the codec's ``Event`` (same checks as WebSocket
  messages); verdict messages are the codec's JSON text, turned into typed Broker values when sent.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..errors import CodecError, TransportError
from .wire import MAX_LINK_FRAME, Event, Invalid, Port

log = logging.getLogger(__name__)

OnMessage = Callable[[Any], Awaitable[None]]  # WebSocket: str | bytes; Broker: codec.Event | CodecError
OnState = Callable[[bool], None]


class Link(Protocol):
    """What ``dpack serve`` needs of a transport; ``WebSocketLink`` and ``BrokerLink`` are the two."""

    url: str

    @property
    def connected(self) -> bool: ...

    async def send(self, text: str) -> bool:
        """Send one codec message; False when the connection is gone (the caller keeps the message)."""
        ...

    async def run(self, on_message: OnMessage, stop: asyncio.Event) -> None:
        """Connect, subscribe, hand every message to ``on_message`` and reconnect until ``stop`` is set."""
        ...


class Backoff:
    """Reconnect delays: 0.2 s doubling to ``maximum``, with +-20% jitter; reset after a good session."""

    def __init__(self, maximum: float, first: float = 0.2) -> None:
        self.first, self.maximum, self.current = first, maximum, first

    def next(self) -> float:
        d = self.current
        self.current = min(self.maximum, self.current * 2)
        return d * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.current = self.first


class WebSocketLink:
    def __init__(
        self,
        url: str,
        topic: str,
        reconnect_max: float,
        on_state: OnState | None = None,
        keepalive: float = 20.0,
    ) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise TransportError(f"zeek.url must start with ws:// or wss://, got {url[:60]!r}")
        self.url, self.topic, self.keepalive = url, topic, keepalive
        self.backoff = Backoff(reconnect_max)
        self.on_state = on_state or (lambda up: None)
        self.ws: Any = None
        self.connects = 0
        self.zeek_version = ""

    @property
    def connected(self) -> bool:
        return self.ws is not None

    async def send(self, text: str) -> bool:
        """Send one message; False if there is no connection (the caller keeps it for later)."""
        ws = self.ws
        if ws is None:
            return False
        try:
            await ws.send(text)
            return True
        except Exception as err:  # noqa: BLE001 - any send failure means the connection is gone
            log.warning("send to Zeek failed (%s); will resend after reconnecting", type(err).__name__)
            return False

    async def run(self, on_message: OnMessage, stop: asyncio.Event) -> None:
        """Connect, subscribe, receive until ``stop``; reconnect after every failure."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

        while not stop.is_set():
            try:
                async with connect(
                    self.url,
                    proxy=None,
                    compression=None,
                    max_size=MAX_LINK_FRAME,
                    open_timeout=5,
                    ping_interval=self.keepalive,
                    ping_timeout=self.keepalive,
                ) as ws:
                    await ws.send(json.dumps([self.topic]))
                    ack = json.loads(await asyncio.wait_for(ws.recv(), timeout=5))
                    if not isinstance(ack, dict) or ack.get("type") != "ack":
                        raise TransportError(f"Zeek did not acknowledge the subscription: {str(ack)[:120]}")
                    self.zeek_version = str(ack.get("version", ""))
                    self.ws = ws
                    self.connects += 1
                    self.backoff.reset()
                    log.info("connected to Zeek %s at %s, topic %s", self.zeek_version, self.url, self.topic)
                    self.on_state(True)
                    await self._receive(ws, on_message, stop)
            except InvalidURI as err:
                raise TransportError(f"zeek.url is not a valid WebSocket URL ({err})") from None
            except (
                OSError,
                ConnectionClosed,
                InvalidHandshake,
                TimeoutError,
                TransportError,
                ValueError,
            ) as err:
                log.warning("Zeek link down: %s", str(err)[:200] or type(err).__name__)
            finally:
                if self.ws is not None:
                    self.ws = None
                    self.on_state(False)
            if stop.is_set():
                break
            delay = self.backoff.next()
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def _receive(self, ws: Any, on_message: OnMessage, stop: asyncio.Event) -> None:
        """Messages to ``on_message`` until ``stop``, which closes the connection (code 1000) and so ends
        the waiting ``recv``. ``recv`` returns at once while messages are buffered: a backlog is taken
        in within one loop turn (a recv task and ``asyncio.wait`` per message took three turns each)."""
        from websockets.exceptions import ConnectionClosed

        async def close_on_stop() -> None:
            await stop.wait()
            await ws.close(1000, "dpack serve stopping")

        closer = asyncio.create_task(close_on_stop())
        try:
            while not stop.is_set():
                try:
                    msg = await ws.recv(decode=False)  # bytes: Zeek may send invalid UTF-8
                except ConnectionClosed:
                    if stop.is_set():
                        return
                    raise
                await on_message(msg)
        finally:
            if stop.is_set():
                await asyncio.wait({closer}, timeout=5)  # the closing handshake
            closer.cancel()


# --- native Broker ----------------------------------------------------------------------------------------


def import_broker() -> Any:
    """Zeek's Broker bindings: ``import broker``, else from ``zeek-config --python_dir``."""
    import importlib
    import shutil
    import subprocess
    import sys

    try:
        return importlib.import_module("broker")
    except ImportError:
        pass
    zc = shutil.which("zeek-config")
    if zc:
        out = subprocess.run([zc, "--python_dir"], capture_output=True, text=True, timeout=10, check=False)
        pydir = out.stdout.strip()
        if pydir and pydir not in sys.path:
            sys.path.append(pydir)
            try:
                return importlib.import_module("broker")
            except ImportError:
                pass
    raise TransportError(
        "zeek.transport 'broker' needs Zeek's Python bindings (the 'broker' module of the same Zeek build: "
        "zeek-config --python_dir); use transport 'websocket' otherwise"
    )


_BROKER_PORT_PROTOS = {"tcp": "TCP", "udp": "UDP", "icmp": "ICMP"}


def from_broker(b: Any, v: Any) -> Any:
    """A Broker value (as the bindings' ``Data.to_py`` gives it) -> the codec's decoded form: counts to
    int, ports to ``codec.Port``, times to epoch seconds, vectors to lists; raw bytes are refused."""
    if isinstance(v, bool | int | str | float) or v is None:
        return v
    if isinstance(v, b.Count):
        return int(v.value)
    if isinstance(v, tuple | list):
        out: list[Any] = []
        for x in v:
            try:
                out.append(from_broker(b, x))
            except CodecError as err:  # as on the WebSocket: a bad record of a batch is one skip
                if not isinstance(x, tuple | list):
                    raise
                out.append(Invalid(str(err)))
        return out
    if isinstance(v, b.Port):
        proto = {b.Port.TCP: "tcp", b.Port.UDP: "udp", b.Port.ICMP: "icmp"}.get(v.get_type(), "unknown")
        return Port(int(v.number()), proto)
    if isinstance(v, datetime.datetime):
        return v.timestamp()
    if isinstance(v, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return v
    if isinstance(v, bytes):
        raise CodecError("string is not valid UTF-8 (raw bytes in a Zeek string?)")
    raise CodecError(f"unsupported Broker value {type(v).__name__}")


def broker_event(b: Any, topic: str, data: Any) -> Event:
    """A received Broker message -> ``codec.Event`` (the event's optional metadata is accepted, ignored)."""
    try:
        ev = b.zeek.Event(data)
        name, args = ev.name(), ev.args()
    except Exception as err:  # noqa: BLE001 - the bindings raise assorted types for foreign data
        raise CodecError(f"not a Zeek event ({type(err).__name__})") from None
    if not isinstance(name, str) or not isinstance(args, list | tuple):
        raise CodecError("not a Zeek event")
    has_md = isinstance(data, tuple) and len(data) >= 3 and isinstance(data[2], tuple) and len(data[2]) > 2
    try:
        return Event(topic, name, from_broker(b, list(args)), has_md)
    except CodecError:
        raise
    except Exception as err:  # noqa: BLE001 - bindings of another Broker version: skip, never fatal
        raise CodecError(f"unreadable Broker value ({type(err).__name__})") from None


def to_broker(b: Any, node: Any) -> Any:
    """One JSON v1 ``{"@data-type", "data"}`` node (our own encoder's output) -> a typed Broker value."""
    t, v = node["@data-type"], node["data"]
    if t == "vector":
        return [to_broker(b, x) for x in v]
    if t == "count":
        return b.Count(v)
    if t == "port":
        num, _, proto = v.partition("/")
        return b.Port(int(num), getattr(b.Port, _BROKER_PORT_PROTOS.get(proto, "Unknown")))
    if t == "timestamp":
        return datetime.datetime.fromisoformat(v).replace(tzinfo=datetime.UTC)
    if t == "address":
        return ipaddress.ip_address(v)
    if t == "none":
        return None
    return v  # string, real, boolean, integer


async def _ready_or_stop(ready: asyncio.Event, stop: asyncio.Event, timeout: float) -> None:
    """Wait until a subscriber's file descriptor fired (``ready``), ``stop`` is set, or ``timeout``."""
    waiter, stopper = asyncio.ensure_future(ready.wait()), asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    stopper.cancel()


class BrokerLink:
    """Native Broker peering with Zeek (see the module docstring). Same interface as ``WebSocketLink``;
    ``on_message`` receives ``codec.Event`` objects, or ``CodecError`` for a message that is not one."""

    def __init__(self, url: str, topic: str, reconnect_max: float, on_state: OnState | None = None) -> None:
        if not url.startswith("tcp://"):
            raise TransportError(f"zeek.url must be tcp://HOST:PORT for transport 'broker', got {url[:60]!r}")
        host, _, port = url[len("tcp://") :].rstrip("/").rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise TransportError(f"zeek.url must be tcp://HOST:PORT, got {url[:60]!r}")
        self.b = import_broker()
        self.url, self.host, self.port, self.topic = url, host.strip("[]"), int(port), topic
        self.backoff = Backoff(reconnect_max)
        self.on_state = on_state or (lambda up: None)
        self.ep: Any = None
        self.up = False
        self.connects = 0
        self.zeek_version = ""

    @property
    def connected(self) -> bool:
        return self.up

    async def send(self, text: str) -> bool:
        if not self.up or self.ep is None:
            return False
        msg = json.loads(text)  # our own encoder's data message
        body = msg["data"][2]["data"]
        name, args = body[0]["data"], [to_broker(self.b, a) for a in body[1]["data"]]
        try:
            self.ep.publish(msg["topic"], self.b.zeek.Event(name, *args))
            return True
        except Exception as err:  # noqa: BLE001 - a failed publish means the peering is gone
            log.warning("publish to Zeek failed (%s); will resend after reconnecting", type(err).__name__)
            return False

    async def run(self, on_message: OnMessage, stop: asyncio.Event) -> None:
        """Peer, subscribe, receive until ``stop``; peer again (bounded backoff) whenever the peering ends."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            ep = self.b.Endpoint()
            status = ep.make_status_subscriber(True)
            sub = ep.make_subscriber(self.topic)
            try:
                # peer_nosync: the blocking peer() would stall the loop, and called from a worker thread
                # it left the endpoint's shutdown hanging (Broker 1.4); the outcome arrives as a status
                ep.peer_nosync(self.host, self.port, 0)
                await self._await_peering(loop, status, stop)
                if stop.is_set():
                    break
                self.ep, self.up = ep, True
                self.connects += 1
                self.backoff.reset()
                log.info("peered with Zeek over Broker at %s:%d, topic %s", self.host, self.port, self.topic)
                self.on_state(True)
                await self._receive(loop, sub, status, on_message, stop)
            except Exception as err:  # noqa: BLE001 - OSError, or the bindings' own errors: peer again later
                log.warning("Zeek link down: %s", str(err)[:200] or type(err).__name__)
            finally:
                if self.up:
                    self.up = False
                    self.on_state(False)
                self.ep = None
                ep.shutdown()
            if stop.is_set():
                break
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.backoff.next())
            except TimeoutError:
                pass

    async def _await_peering(
        self, loop: asyncio.AbstractEventLoop, status: Any, stop: asyncio.Event, timeout: float = 10.0
    ) -> None:
        """Wait for the peering's outcome: return once Zeek is peered, raise OSError when it fails."""
        ready = asyncio.Event()
        loop.add_reader(status.fd(), ready.set)
        try:
            end = loop.time() + timeout
            while not stop.is_set():
                ready.clear()
                for st in status.poll():
                    if isinstance(st, self.b.Status) and st.code() == self.b.SC.PeerAdded:
                        return
                    if isinstance(st, self.b.Error):
                        raise OSError(f"cannot peer with Zeek at {self.host}:{self.port} ({st})")
                left = end - loop.time()
                if left <= 0:
                    raise OSError(f"no answer from Zeek at {self.host}:{self.port} within {timeout:.0f} s")
                await _ready_or_stop(ready, stop, min(left, 1.0))
        finally:
            loop.remove_reader(status.fd())

    async def _receive(
        self,
        loop: asyncio.AbstractEventLoop,
        sub: Any,
        status: Any,
        on_message: OnMessage,
        stop: asyncio.Event,
    ) -> None:
        """Wake on the subscribers' file descriptors; hand every message on; return when the peer is lost."""
        lost = {
            getattr(self.b.SC, n)
            for n in ("PeerLost", "PeerRemoved", "PeerUnavailable")
            if hasattr(self.b.SC, n)
        }
        ready = asyncio.Event()
        for fd in (sub.fd(), status.fd()):
            loop.add_reader(fd, ready.set)
        try:
            while not stop.is_set():
                ready.clear()
                for st in status.poll():  # statuses (peer added/lost) and errors; Broker versions differ
                    if isinstance(st, self.b.Status) and st.code() in lost:
                        raise OSError(f"Zeek peer lost ({st})")
                for topic, data in sub.poll():
                    try:
                        ev = broker_event(self.b, topic, data)
                    except CodecError as err:
                        await on_message(err)
                        continue
                    await on_message(ev)
                await _ready_or_stop(ready, stop, 1.0)
        finally:
            for fd in (sub.fd(), status.fd()):
                loop.remove_reader(fd)

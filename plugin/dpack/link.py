"""Transports between ``dpack serve`` and Zeek. Each one connects, subscribes to the sample topic, hands
every received message to a callback, sends what it is given, and reconnects with bounded backoff.

* ``WebSocketLink``: Zeek's WebSocket API, JSON v1 (any Zeek >= 6.0 with a listener).

Not built yet: a native Broker link through the Python bindings that ship with the user's Zeek (found
with ``zeek-config --python_dir``; Broker's wire format only interoperates within one Zeek version).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import DpackError

log = logging.getLogger(__name__)

OnMessage = Callable[[str | bytes], Awaitable[None]]
OnState = Callable[[bool], None]


class TransportError(DpackError):
    """The link to Zeek cannot be set up (bad URL, missing bindings)."""


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
    def __init__(self, url: str, topic: str, reconnect_max: float, on_state: OnState | None = None) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise TransportError(f"zeek.url must start with ws:// or wss://, got {url[:60]!r}")
        self.url, self.topic = url, topic
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
                async with connect(self.url, proxy=None, compression=None, max_size=8 * 1024 * 1024,
                                   open_timeout=5, ping_interval=20, ping_timeout=20) as ws:  # fmt: skip
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
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while True:
                recv = asyncio.ensure_future(ws.recv(decode=False))  # bytes: Zeek may send invalid UTF-8
                done, _ = await asyncio.wait({recv, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if recv not in done:
                    recv.cancel()
                    await ws.close(1000, "dpack serve stopping")
                    return
                await on_message(recv.result())
        finally:
            stopper.cancel()

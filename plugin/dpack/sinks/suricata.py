"""Talking to a running Suricata over its unix socket (the protocol ``suricatasc`` speaks).

A session: connect, send ``{"version": "0.2"}``, read ``{"return": "OK"}``; then one JSON command per line,
one JSON reply per line. Every wait is bounded by ``timeout``; failures raise ``SuricataError`` with one
line (the caller keeps the rules file and retries later).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from typing import Any

from ..errors import DpackError

PROTOCOL_VERSION = "0.2"
_MAX_REPLY = 16 * 1024 * 1024


class SuricataError(DpackError):
    """Suricata's socket is missing, dead, or answered with a failure."""


class SuricataSocket:
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def _recv(self, sock: socket.socket, deadline: float) -> dict[str, Any]:
        buf = b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise SuricataError(f"{self.path}: no answer from Suricata within {self.timeout:g} s")
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise SuricataError(f"{self.path}: Suricata closed the socket")
            buf += chunk
            if len(buf) > _MAX_REPLY:
                raise SuricataError(f"{self.path}: reply larger than {_MAX_REPLY} bytes")
        try:
            reply = json.loads(buf)
        except ValueError:
            raise SuricataError(f"{self.path}: reply is not JSON") from None
        if not isinstance(reply, dict):
            raise SuricataError(f"{self.path}: reply is not a JSON object")
        return reply

    def commands(self, cmds: list[tuple[str, dict[str, Any] | None]]) -> list[dict[str, Any]]:
        """Run commands in one session; returns the replies (``{"return": "OK"|"NOK", "message": ...}``)."""
        deadline = time.monotonic() + self.timeout
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                sock.sendall(json.dumps({"version": PROTOCOL_VERSION}).encode())
                hello = self._recv(sock, deadline)
                if hello.get("return") != "OK":
                    raise SuricataError(f"{self.path}: Suricata refused protocol {PROTOCOL_VERSION}: {hello}")
                out = []
                for name, args in cmds:
                    msg: dict[str, Any] = {"command": name}
                    if args:
                        msg["arguments"] = args
                    sock.sendall((json.dumps(msg) + "\n").encode())
                    out.append(self._recv(sock, deadline))
                return out
        except FileNotFoundError:
            raise SuricataError(
                f"{self.path}: no Suricata socket (is Suricata running with unix-command?)"
            ) from None
        except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError) as err:
            raise SuricataError(f"{self.path}: Suricata socket is dead ({type(err).__name__})") from None
        except OSError as err:
            raise SuricataError(f"{self.path}: {err}") from None

    def command(self, name: str, args: dict[str, Any] | None = None) -> Any:
        (reply,) = self.commands([(name, args)])
        if reply.get("return") != "OK":
            raise SuricataError(f"Suricata: {name} failed: {str(reply.get('message'))[:200]}")
        return reply.get("message")

    def reload_rules(self, wait: float = 60.0) -> dict[str, Any]:
        """``ruleset-reload-nonblocking``, then ``ruleset-stats`` until ``last_reload`` moves; returns the stats.
        A reload whose rules failed leaves Suricata on its previous rules; that is reported as an error."""
        before = self._stats()
        self.command("ruleset-reload-nonblocking")
        end = time.monotonic() + wait
        while time.monotonic() < end:
            stats = self._stats()
            if stats.get("last_reload") != before.get("last_reload"):
                if stats.get("rules_failed", 0):
                    raise SuricataError(f"Suricata reloaded with {stats['rules_failed']} failed rule(s)")
                return stats
            time.sleep(0.1)
        raise SuricataError(f"Suricata did not finish reloading within {wait:g} s")

    def _stats(self) -> dict[str, Any]:
        """``ruleset-stats`` (rules loaded/failed) merged with ``ruleset-reload-time`` (last_reload)."""
        out: dict[str, Any] = {}
        for reply in self.commands([("ruleset-stats", None), ("ruleset-reload-time", None)]):
            msg = reply.get("message")
            if reply.get("return") == "OK" and isinstance(msg, list) and msg and isinstance(msg[0], dict):
                out.update(msg[0])
        return out

    def dataset(self, op: str, setname: str, addr: str) -> None:
        """``dataset-add`` / ``dataset-remove`` of one IP address (validated) in an ``ip`` dataset."""
        assert op in ("add", "remove")
        value = str(ipaddress.ip_address(addr))
        self.command(f"dataset-{op}", {"setname": setname, "settype": "ip", "datavalue": value})

"""Bounded per-originator histories and the causal features of a new flow.

A host is an originator address cut to ``prefix_v4``/``prefix_v6`` bits (default /32 and /64: one
machine; an IPv6 host picks its interface id freely inside its /64). Not /24: benign neighbours of an
attacker in the same /24 would share its history and its alarms (guilt by address block; measured in
docs/results.md).

Each host keeps exponentially decayed flow counts over 1, 10 and 60 s (and per responder:port), which
read a flood's real rate, and its last ``HISTORY`` flows (time, responder, port, failed, flagged) for the
distinct responders and ports and the shares; at most ``max_hosts`` hosts are kept, the least recently seen forgotten first (counted in ``forgotten``), so a
flood of spoofed sources costs bounded memory. Features of a flow count the flow itself and the host's
flows in the window before it; they use only what precedes the flow's verdict.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

HISTORY = 128  # flows per host kept for distinct counts and shares (the rates are counters, not this)
MAX_HOSTS = 100_000
WINDOWS = (1.0, 10.0, 60.0)

# Feature names as explanations show them; the order of the columns of ``features``.
FEATURES = (
    "host.new_flows_1s",
    "host.new_flows_10s",
    "host.new_flows_60s",
    "host.responders_60s",
    "host.ports_60s",
    "host.same_service_60s",
    "host.failed_60s",
    "host.failed_share_60s",
    "host.flagged_share_60s",
)


@dataclass(frozen=True, slots=True)
class HostKey:
    """How an originator address becomes a host key."""

    prefix_v4: int = 32
    prefix_v6: int = 64

    def __post_init__(self) -> None:
        if not (8 <= self.prefix_v4 <= 32 and 16 <= self.prefix_v6 <= 128):
            raise ValueError("context prefix lengths: v4 in 8..32, v6 in 16..128")

    def of(self, addr: str) -> str:
        if ":" not in addr:
            if self.prefix_v4 == 32:
                return addr
            net = ipaddress.IPv4Network(f"{addr}/{self.prefix_v4}", strict=False)
            return str(net.network_address)
        bits = int(ipaddress.IPv6Address(addr))
        keep = bits >> (128 - self.prefix_v6) << (128 - self.prefix_v6)
        return str(ipaddress.IPv6Address(keep))


class _Host:
    """One host: decayed flow counts (rates that do not saturate: a flood of 1,000 flows per second
    reads 1,000, not the ring's size), decayed counts per service, and the ring of its last flows."""

    __slots__ = ("last", "rates", "services", "ring")

    def __init__(self) -> None:
        self.last = -math.inf
        self.rates = [0.0, 0.0, 0.0]  # flows in about the last 1, 10, 60 s (exponentially decayed)
        self.services: OrderedDict[tuple[str, int], tuple[float, float]] = OrderedDict()
        self.ring: deque[tuple[float, str, int, bool, bool]] = deque(maxlen=HISTORY)

    def decayed(self, ts: float) -> list[float]:
        dt = max(0.0, ts - self.last)
        return [r * math.exp(-dt / w) for r, w in zip(self.rates, WINDOWS, strict=True)]

    def service(self, ts: float, key: tuple[str, int]) -> float:
        t, c = self.services.get(key, (ts, 0.0))
        return c * math.exp(-max(0.0, ts - t) / WINDOWS[2])


SERVICES_PER_HOST = 32  # responder:port counters per host (least recently used forgotten)


class HostState:
    """The recent flows of up to ``max_hosts`` hosts (least recently seen forgotten first)."""

    def __init__(self, key: HostKey | None = None, max_hosts: int = MAX_HOSTS) -> None:
        self.key = key or HostKey()
        self.max_hosts = max_hosts
        self.hosts: OrderedDict[str, _Host] = OrderedDict()
        self.forgotten = 0
        self._keys: dict[str, str] = {}  # address -> host key, bounded like the hosts

    def host_of(self, addr: str) -> str:
        k = self._keys.get(addr)
        if k is None:
            if len(self._keys) >= 2 * self.max_hosts:
                self._keys.clear()
            k = self._keys[addr] = self.key.of(addr)
        return k

    def observe(self, src: str, ts: float, dst: str, dport: int, failed: bool) -> tuple[str, np.ndarray]:
        """The features of a new flow of ``src`` (its host's past plus this flow); the flow is not yet
        added (``add`` does that once its verdict is known: ``flagged`` is a feature of later flows)."""
        host = self.host_of(src)
        h = self.hosts.get(host)
        out = np.zeros(len(FEATURES), dtype=np.float32)
        n60 = 1
        failed_n, flagged_n = int(failed), 0
        responders = {dst}
        ports = {dport}
        if h is not None:
            r = h.decayed(ts)
            out[0], out[1], out[2] = r[0] + 1, r[1] + 1, r[2] + 1
            out[5] = h.service(ts, (dst, dport)) + 1
            lo = ts - WINDOWS[2]
            for t, d, p, f, g in reversed(h.ring):
                if t <= lo:
                    break
                n60 += 1
                responders.add(d)
                ports.add(p)
                failed_n += f
                flagged_n += g
        else:
            out[0] = out[1] = out[2] = out[5] = 1
        out[3], out[4] = len(responders), len(ports)
        out[6] = failed_n
        out[7] = failed_n / n60
        out[8] = flagged_n / n60
        return host, out

    def add(self, host: str, ts: float, dst: str, dport: int, failed: bool, flagged: bool) -> None:
        h = self.hosts.get(host)
        if h is None:
            if len(self.hosts) >= self.max_hosts:
                self.hosts.popitem(last=False)
                self.forgotten += 1
            h = self.hosts[host] = _Host()
        else:
            self.hosts.move_to_end(host)
        r = h.decayed(ts)
        h.rates = [x + 1 for x in r]
        key = (dst, dport)
        c = h.service(ts, key) + 1
        h.services[key] = (max(ts, h.last), c)
        h.services.move_to_end(key)
        if len(h.services) > SERVICES_PER_HOST:
            h.services.popitem(last=False)
        h.last = max(h.last, ts)
        h.ring.append((ts, dst, dport, failed, flagged))

    def flagged_recent(self, host: str, now: float, window: float) -> int:
        """Flagged flows of ``host`` in the ``window`` seconds up to ``now`` (what the rules escalate on)."""
        h = self.hosts.get(host)
        if h is None:
            return 0
        return sum(1 for t, _, _, _, g in h.ring if g and t > now - window)


def prefix_feature(score: float, threshold: float) -> float:
    """The prefix model's score as a context column: log of score over threshold (0 at the threshold)."""
    return math.log(max(score, 1e-12) / threshold)

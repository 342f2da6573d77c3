"""Bounded per-originator histories and the causal features of a new flow.

A host is an originator address cut to ``prefix_v4``/``prefix_v6`` bits (default /32 and /64: one
machine; an IPv6 host picks its interface id freely inside its /64). Not /24: benign neighbours of an
attacker in the same /24 would share its history and its alarms (guilt by address block; measured in
docs/results.md).

Each host keeps exponentially decayed counts over 1, 10 and 60 s (flows, failed and flagged flows, per
responder:port), which read a flood's real rate, and its last ``HISTORY`` flows of the last minute for
the distinct responders and ports; at most ``max_hosts`` hosts are kept, the least recently seen forgotten first (counted in ``forgotten``), so a
flood of spoofed sources costs bounded memory. Features of a flow count the flow itself and the host's
flows in the window before it; they use only what precedes the flow's verdict.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

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
    """One host: exponentially decayed counts over 1, 10 and 60 s (flows, failed flows, flows the prefix
    flagged, flows per responder:port) - O(1) per flow, never saturated (a flood of 1,000 flows per
    second reads 1,000) - and its last ``HISTORY`` flows of the last minute with counts of their
    responders and ports, for the distinct counts."""

    __slots__ = (
        "last",
        "r1",
        "r10",
        "r60",
        "failed",
        "flagged",
        "services",
        "ring",
        "dsts",
        "ports",
        "alarms",
    )

    def __init__(self) -> None:
        self.last = -math.inf
        self.r1 = self.r10 = self.r60 = self.failed = self.flagged = 0.0
        self.services: OrderedDict[tuple[str, int], tuple[float, float]] = OrderedDict()
        self.ring: deque[tuple[float, str, int]] = deque()
        self.dsts: dict[str, int] = {}
        self.ports: dict[int, int] = {}
        # times of the host's last flows the stage decided anomalous; made at the first (an empty deque
        # is 600 bytes, a third of a quiet host)
        self.alarms: deque[float] | None = None

    def expire(self, before: float) -> None:
        ring = self.ring
        while ring and (ring[0][0] <= before or len(ring) > HISTORY):
            _, d, p = ring.popleft()
            _drop(self.dsts, d)
            _drop(self.ports, p)


def _drop(counts: dict[Any, int], key: Any) -> None:
    n = counts[key] - 1
    if n:
        counts[key] = n
    else:
        del counts[key]


SERVICES_PER_HOST = 32  # responder:port counters per host (least recently used forgotten)
_W1, _W10, _W60 = WINDOWS


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

    def observe(self, src: str, ts: float, dst: str, dport: int, failed: bool) -> tuple[str, list[float]]:
        """The features of a new flow of ``src`` (its host's past plus this flow), in ``FEATURES``
        order; the flow is not yet added (``add`` does that)."""
        host = self.host_of(src)
        h = self.hosts.get(host)
        if h is None:
            f = float(failed)
            return host, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, f, f, 0.0]
        h.expire(ts - _W60)
        dt = ts - h.last if ts > h.last else 0.0
        e60 = math.exp(-dt / _W60)
        n60 = h.r60 * e60 + 1.0
        t, c = h.services.get((dst, dport), (ts, 0.0))
        failed_n = h.failed * e60 + failed
        return host, [
            h.r1 * math.exp(-dt / _W1) + 1.0,
            h.r10 * math.exp(-dt / _W10) + 1.0,
            n60,
            float(len(h.dsts) + (dst not in h.dsts)),
            float(len(h.ports) + (dport not in h.ports)),
            c * math.exp(-(ts - t if ts > t else 0.0) / _W60) + 1.0,
            failed_n,
            failed_n / n60,
            h.flagged * e60 / n60,
        ]

    def add(self, host: str, ts: float, dst: str, dport: int, failed: bool, flagged: bool) -> None:
        h = self.hosts.get(host)
        if h is None:
            if len(self.hosts) >= self.max_hosts:
                self.hosts.popitem(last=False)
                self.forgotten += 1
            h = self.hosts[host] = _Host()
        else:
            self.hosts.move_to_end(host)
        dt = ts - h.last if ts > h.last else 0.0
        e60 = math.exp(-dt / _W60)
        h.r1 = h.r1 * math.exp(-dt / _W1) + 1.0
        h.r10 = h.r10 * math.exp(-dt / _W10) + 1.0
        h.r60 = h.r60 * e60 + 1.0
        h.failed = h.failed * e60 + failed
        h.flagged = h.flagged * e60 + flagged
        key = (dst, dport)
        t, c = h.services.get(key, (ts, 0.0))
        h.services[key] = (max(ts, t), c * math.exp(-(ts - t if ts > t else 0.0) / _W60) + 1.0)
        h.services.move_to_end(key)
        if len(h.services) > SERVICES_PER_HOST:
            h.services.popitem(last=False)
        if ts > h.last:
            h.last = ts
        h.ring.append((ts, dst, dport))
        h.dsts[dst] = h.dsts.get(dst, 0) + 1
        h.ports[dport] = h.ports.get(dport, 0) + 1
        h.expire(ts - _W60)

    def alarm(self, host: str, ts: float, window: float, keep: int) -> int:
        """Record that a flow of ``host`` at ``ts`` was decided anomalous; the number of such flows of the
        host within ``window`` seconds up to it (at most ``keep`` remembered: the rules' escalation
        needs no more). 1 for a host no longer kept."""
        h = self.hosts.get(host)
        if h is None:
            return 1
        q = h.alarms
        if q is None:
            q = h.alarms = deque()
        q.append(ts)
        while q and ts - q[0] > window:
            q.popleft()
        while len(q) > keep:
            q.popleft()
        return len(q)


def prefix_feature(score: float, threshold: float) -> float:
    """The prefix model's score as a context column: log of score over threshold (0 at the threshold)."""
    return math.log(max(score, 1e-12) / threshold)

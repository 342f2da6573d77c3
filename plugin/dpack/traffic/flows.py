"""Bidirectional flow table: groups packets into flows and hands out each flow's prefix frames.

dpack's flows are Zeek's connections, so that a capture scored offline gives the verdicts a sensor gives
live (Zeek decides what a connection is there; ``tools/zeeklab.py`` and ``tests/test_zeek_flows.py`` hold
the two equal on real Zeek). The rules, with Zeek's defaults (``FlowRules``):
  * TCP and UDP: bidirectional 5-tuple; the first packet's sender is the originator.
  * ICMP/ICMPv6: Zeek's key - the address pair with the message type and its counterpart (echo request
    8 and reply 0 are one connection; the echo identifier is not part of it), or, for messages without a
    counterpart (errors), type and code in one direction. ``dport`` holds the counterpart or the code,
    as Zeek's ``resp_p`` does.
  * Other IP protocols: protocol + address pair (Zeek's ``unknown_transport`` connections); tunnels that
    Zeek decapsulates (IP-in-IP, IPv6-in-IPv4, GRE) and fragments of fragmented datagrams (Zeek
    reassembles them, and the reassembled packet is not a captured frame) are counted and left out.
  * A connection ends after ``tcp_timeout`` (300 s), ``udp_timeout`` or ``icmp_timeout`` (60 s) without
    packets; a UDP connection to a DNS port ends as Zeek's DNS analyzer ends it (checks every
    ``dns_timeout`` = 10 s after its start, ends it when idle for 9 s of them); a TCP connection that
    has seen FIN or RST also ends when a new SYN (without ACK) arrives on the same 5-tuple.

A flow is handed out (``FlowSample``) as soon as its prefix is complete (early detection: the verdict does
not wait for the flow to end), ``spec.max_wait`` seconds after its first packet with what it has then
(Zeek's ``DPack::max_wait``), or when it ends before either. The table then keeps only a small record of
the flow so that its later packets are not mistaken for a new flow.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .capture import FrameBlock
from .conn import ConnRecord, conn_state, tcp_history_letter
from .encode import SCAN_PACKETS, Frame, PrefixSpec, counts_for_prefix
from .keys import addr_text, community_id, flow_key, flow_ports
from .packets import (
    LINKTYPE_ETHERNET,
    PROTO_ICMP,
    PROTO_ICMP6,
    PROTO_NAMES,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    Packet,
    ip_offset,
    parse_ip,
)
from .sharding import _first_bytes, plain_mask, plain_tcp_udp, shard_array

DEFAULT_IDLE_TIMEOUT = 60.0  # Zeek's udp_inactivity_timeout and icmp_inactivity_timeout
DNS_PORTS = frozenset({53, 137, 5353, 5355})  # UDP ports Zeek's DNS analyzer takes (base/protocols/dns)


@dataclass(frozen=True)
class FlowRules:
    """Where one flow ends and the next begins: Zeek's connection timeouts (``init-bare.zeek``). A site
    that changes them in Zeek sets the same values here (config ``flows:``)."""

    tcp_timeout: float = 300.0  # tcp_inactivity_timeout
    udp_timeout: float = DEFAULT_IDLE_TIMEOUT  # udp_inactivity_timeout
    icmp_timeout: float = DEFAULT_IDLE_TIMEOUT  # icmp_inactivity_timeout
    other_timeout: float = DEFAULT_IDLE_TIMEOUT  # unknown_ip_inactivity_timeout
    dns_timeout: float = 10.0  # dns_session_timeout
    # Not Zeek's: flows held at once at most. A flow beyond it ends the least recently active one (its
    # sample handed out with what it has, counted in ``FlowStats.evicted``), so a flood of one-packet
    # flows costs bounded memory (about 1.5 KB a flow while its prefix is collected).
    max_flows: int = 500_000

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "max_flows":
                if not 1 <= v <= 100_000_000:
                    raise ValueError(f"flows.max_flows must be in [1, 100000000], got {v}")
            elif not 0 < v <= 86400:
                raise ValueError(f"flows.{f.name} must be in (0, 86400] seconds, got {v}")

    def timeout(self, proto: int) -> float:
        if proto == PROTO_TCP:
            return self.tcp_timeout
        if proto == PROTO_UDP:
            return self.udp_timeout
        if proto in (PROTO_ICMP, PROTO_ICMP6):
            return self.icmp_timeout
        return self.other_timeout

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class FlowSample:
    """One flow's identity and prefix frames: what the scorer needs for a verdict."""

    ts: float  # first packet's timestamp
    proto: int
    src: str  # initiator
    sport: int  # ICMP: type of the first packet
    dst: str
    dport: int  # ICMP: code of the first packet
    frames: list[Frame]
    uid: str = ""  # Zeek's connection uid, when the sample came from Zeek
    community_id: str = ""
    # TCP handshake demonstrably completed (``handshake.from_frames`` of ``frames``; None: not worked out
    # yet - it is for the anomalous ones only, or before the frames are dropped offline)
    handshake: bool | None = None
    ready: float = 0.0  # when Zeek would hand it out: Nth prefix packet, first + max_wait, or the flow's end
    # (frame number at which the sample became ready, frame number of the flow's first packet): the
    # order ``FlowTable`` hands samples out in, so that shards of one capture merge back into it
    order: tuple[int, int] = (0, 0)

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto))


@dataclass
class FlowStats:
    frames: int = 0
    non_ip: int = 0
    malformed: int = 0
    fragments: int = 0  # pieces of fragmented datagrams (left out, as Zeek reassembles them)
    tunnels: int = 0  # IP-in-IP, IPv6-in-IPv4, GRE packets (left out, as Zeek decapsulates them)
    flows: int = 0
    evicted: int = 0  # flows ended early because the table held FlowRules.max_flows


@dataclass(slots=True)
class _Flow:
    ts: float
    last: float
    first: int  # frame number of the first packet
    proto: int
    src: bytes
    sport: int
    dst: bytes
    dport: int
    frames: list[Frame] | None = field(default_factory=list)  # None once handed out
    packets: int = 1  # packets seen so far (counted while the prefix is collected)
    timeout: float = DEFAULT_IDLE_TIMEOUT  # idle seconds after which it ends (FlowRules)
    dns: bool = False  # a UDP flow to a DNS port (ends as Zeek's DNS analyzer ends it)
    closing: bool = False  # TCP FIN or RST seen
    # conn.log counters (Zeek's field names), kept only when the table was made with records=True
    orig_pkts: int = 0
    resp_pkts: int = 0
    orig_bytes: int = 0
    resp_bytes: int = 0
    orig_ip_bytes: int = 0
    resp_ip_bytes: int = 0
    history: str = ""

    def ended_by(self, ts: float, dns_timeout: float) -> float | None:
        """When Zeek would have ended this flow before a packet at ``ts`` (None: it is still open then).

        Inactivity: at ``last + timeout``. DNS over UDP: Zeek's DNS analyzer checks at start + k *
        ``dns_timeout`` and ends the connection if it has been idle for ``dns_timeout`` - 1 s then; the
        latest check before ``ts`` is the one that can end it."""
        if ts - self.last >= self.timeout:
            return self.last + self.timeout
        if self.dns and ts - self.ts >= dns_timeout:
            check = self.ts + dns_timeout * math.floor((ts - self.ts) / dns_timeout)
            if check > self.last and check - self.last >= dns_timeout - 1.0:
                return check
        return None


def _from_initiator(f: _Flow, p: Packet) -> bool:
    """Sent by the flow's initiator (ports decide when both ends share an address)."""
    return p.src == f.src and (p.sport == f.sport or p.proto not in (PROTO_TCP, PROTO_UDP))


def _ip_len(frame: bytes, off: int, version: int) -> int:
    """The IP packet's length from its header (not the captured length)."""
    if version == 4:
        return (frame[off + 2] << 8) | frame[off + 3]
    return 40 + ((frame[off + 4] << 8) | frame[off + 5])


class FlowTable:
    """Feed frames in capture order with ``add``; collect finished samples from its return values.

    With ``records=True`` the table also counts every packet of every flow and appends a ``ConnRecord``
    (a Zeek ``conn.log``-like summary) to ``self.records`` when the flow ends; that turns the fast path
    for continuation packets off, so it is for offline record extraction, not for the prefix scorer.
    """

    def __init__(self, spec: PrefixSpec, rules: FlowRules | None = None, records: bool = False) -> None:
        self.spec = spec
        self.rules = rules if rules is not None else FlowRules()
        # One table per timeout class, oldest activity first: in each, flows end in the order of their last
        # packet, so expiry stops at the first one still open (DNS flows end at their checks: see expire).
        # Every sample is handed out at the frame at which it is due whatever else is in the table, so
        # that shards of a capture hand out their samples exactly as one whole table would.
        self._tcp: OrderedDict[tuple[object, ...], _Flow] = OrderedDict()
        self._udp: OrderedDict[tuple[object, ...], _Flow] = OrderedDict()
        self._dns: OrderedDict[tuple[object, ...], _Flow] = OrderedDict()  # UDP flows to DNS ports
        self._icmp: OrderedDict[tuple[object, ...], _Flow] = OrderedDict()
        self._ip: OrderedDict[tuple[object, ...], _Flow] = OrderedDict()  # other IP protocols
        self._tables = (self._tcp, self._udp, self._dns, self._icmp, self._ip)
        self._waiting: list[tuple[float, int, _Flow]] = []  # heap: (first packet + max_wait, first frame)
        self.stats = FlowStats()
        self._now = 0.0  # capture time of the last expiry pass
        self._ts = 0.0  # capture time of the last frame
        self.index = 0  # frames seen, ``add``ed or ``tick``ed
        self.records: list[ConnRecord] | None = [] if records else None

    def _evict(self, out: list[FlowSample], ts: float) -> None:
        """End the least recently active flow (the oldest first entry of the tables) to make room."""
        table = min((t for t in self._tables if t), key=lambda t: next(iter(t.values())).last)
        _, f = table.popitem(last=False)
        self.stats.evicted += 1
        self._ended(f, out, ts)

    def _find(
        self, p: Packet, key: tuple[object, ...]
    ) -> tuple[OrderedDict[tuple[object, ...], _Flow], _Flow | None]:
        """The table of a packet's flow, and the flow if it is there."""
        if p.proto == PROTO_TCP:
            return self._tcp, self._tcp.get(key)
        if p.proto == PROTO_UDP:
            if p.sport in DNS_PORTS or p.dport in DNS_PORTS:
                f = self._dns.get(key)
                if f is not None:
                    return self._dns, f
            return self._udp, self._udp.get(key)
        table = self._icmp if p.proto in (PROTO_ICMP, PROTO_ICMP6) else self._ip
        return table, table.get(key)

    def __len__(self) -> int:
        return sum(map(len, self._tables))

    def _ended(self, f: _Flow, out: list[FlowSample], at: float) -> None:
        """``f`` ended at ``at``: its sample if not handed out yet, its record."""
        if f.frames is not None:
            out.append(self._sample(f, at))
        if self.records is None:
            return
        proto = PROTO_NAMES.get(f.proto, str(f.proto))
        self.records.append(
            ConnRecord(
                f.ts,
                proto,
                addr_text(f.src),
                f.sport,
                addr_text(f.dst),
                f.dport,
                f.last - f.ts,
                f.orig_pkts,
                f.resp_pkts,
                f.orig_bytes,
                f.resp_bytes,
                f.orig_ip_bytes,
                f.resp_ip_bytes,
                f.history,
                conn_state(proto, f.history, f.resp_pkts),
                community_id=community_id(f.proto, f.src, f.dst, f.sport, f.dport),
            )
        )

    def _count(self, f: _Flow, p: Packet, frame: bytes, off: int) -> None:
        is_orig = _from_initiator(f, p)
        size = _ip_len(frame, off, p.version)
        letter = ""
        if p.proto == PROTO_TCP:
            letter = tcp_history_letter(p.tcp_flags, p.payload_len)
        elif p.proto == PROTO_UDP and p.payload_len > 0:
            letter = "D"
        if is_orig:
            f.orig_pkts += 1
            f.orig_bytes += p.payload_len
            f.orig_ip_bytes += size
        else:
            f.resp_pkts += 1
            f.resp_bytes += p.payload_len
            f.resp_ip_bytes += size
            letter = letter.lower()
        if letter and letter not in f.history:
            f.history += letter

    def _sample(self, f: _Flow, ready: float) -> FlowSample:
        frames = f.frames or []
        f.frames = None
        src, dst = addr_text(f.src), addr_text(f.dst)
        return FlowSample(
            f.ts,
            f.proto,
            src,
            f.sport,
            dst,
            f.dport,
            frames,
            community_id=community_id(f.proto, f.src, f.dst, f.sport, f.dport),
            ready=ready,
            order=(self.index, f.first),
        )

    def add(self, ts: float, linktype: int, frame: bytes) -> list[FlowSample]:
        """Account one frame; return the samples that became ready (usually none or one), in ``order``."""
        out = self.tick(ts)
        plain = linktype == LINKTYPE_ETHERNET and plain_tcp_udp(frame)
        return self._place(ts, linktype, frame, plain, out)

    def _place(
        self, ts: float, linktype: int, frame: bytes, plain: bool, out: list[FlowSample]
    ) -> list[FlowSample]:
        """``add`` after its ``tick``; ``plain``: ``plain_tcp_udp`` of an Ethernet frame (the block
        reader knows it from ``plain_mask``), appending to ``out``."""
        self.stats.frames += 1
        if plain and self.records is None and self._known_continuation(ts, frame):
            return out
        off = ip_offset(frame, linktype)
        if off < 0:
            self.stats.non_ip += 1
            return out
        p = parse_ip(frame, off)
        if p is None:
            self.stats.malformed += 1
            return out
        key = flow_key(p)
        if key is None:
            if p.fragmented:
                self.stats.fragments += 1
            else:
                self.stats.tunnels += 1
            return out
        table, f = self._find(p, key)
        if f is not None:
            end = f.ended_by(ts, self.rules.dns_timeout)
            if end is None and (
                f.closing and p.proto == PROTO_TCP and p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            ):
                end = ts  # Zeek's connection reuse: the old connection ends with the new SYN
            if end is not None:
                del table[key]
                self._ended(f, out, end)
                f = None
        if f is None:
            self.stats.flows += 1
            if len(self) >= self.rules.max_flows:
                self._evict(out, ts)
            sport, dport = flow_ports(p)
            f = _Flow(ts, ts, self.index, p.proto, p.src, sport, p.dst, dport)
            f.timeout = self.rules.timeout(p.proto)
            f.dns = p.proto == PROTO_UDP and dport in DNS_PORTS
            if f.dns:
                table = self._dns
            elif p.proto == PROTO_UDP:
                table = self._udp
            table[key] = f
            if self.spec.max_wait < math.inf:
                heapq.heappush(self._waiting, (ts + self.spec.max_wait, f.first, f))
            first = True
        else:
            if f.frames is not None and ts >= f.ts + self.spec.max_wait:
                out.append(self._sample(f, f.ts + self.spec.max_wait))  # waited long enough
            f.last = ts
            table.move_to_end(key)
            first = False
        if self.records is not None:
            self._count(f, p, frame, off)
        if p.proto == PROTO_TCP:
            if p.tcp_flags & (TCP_FIN | TCP_RST):
                f.closing = True
        if f.frames is not None and not first:
            f.packets += 1
        if (
            f.frames is not None
            and f.packets <= SCAN_PACKETS
            and counts_for_prefix(p, first, self.spec.policy)
        ):
            f.frames.append(Frame(linktype, frame, _from_initiator(f, p)))
            if len(f.frames) >= self.spec.n_packets:
                out.append(self._sample(f, ts))
        if len(out) > 1:
            out.sort(key=_order)
        return out

    def tick(self, ts: float) -> list[FlowSample]:
        """Count a frame and expire idle flows (at most once a second of capture time). ``add`` starts
        with it; a shard calls it alone for frames of other shards, so that every shard hands its samples
        out at the same frame numbers as one whole table."""
        self.index += 1
        self._ts = ts
        if ts - self._now >= 1.0 or ts < self._now:
            self._now = ts
            out = self.expire(ts)
            if len(out) > 1:
                out.sort(key=_order)
            return out
        return []

    def _known_continuation(self, ts: float, frame: bytes) -> bool:
        """Fast path for the bulk of a capture: a later packet of a flow whose prefix is already handed out.

        Only for plain Ethernet + IPv4 (no options, not a fragment) + TCP/UDP frames (the caller checks);
        it builds the same key as ``keys.flow_key`` straight from the bytes and only refreshes the flow's
        activity. Anything that could start a new flow (idle too long, a SYN after FIN/RST, a DNS flow)
        takes the full path.
        """
        proto = frame[23]
        a = frame[26:30] + frame[34:36]
        b = frame[30:34] + frame[36:38]
        key = (proto, a, b) if a <= b else (proto, b, a)
        if proto == PROTO_TCP:
            table = self._tcp
        elif (frame[34] << 8 | frame[35]) in DNS_PORTS or (frame[36] << 8 | frame[37]) in DNS_PORTS:
            return False  # DNS flows end by their own rule (the full path knows it)
        else:
            table = self._udp
        f = table.get(key)
        if f is None or f.frames is not None or ts - f.last >= f.timeout:
            return False
        if proto == PROTO_TCP:
            if len(frame) < 48:
                return False
            flags = frame[47]
            if f.closing and flags & (TCP_SYN | TCP_ACK) == TCP_SYN:
                return False
            if flags & (TCP_FIN | TCP_RST):
                f.closing = True
        f.last = ts
        table.move_to_end(key)
        return True

    def expire(self, now: float) -> list[FlowSample]:
        """Hand out flows that waited ``max_wait`` for their prefix, and flows that ended (idle for longer
        than their timeout: they are forgotten)."""
        out: list[FlowSample] = []
        waiting = self._waiting
        while waiting and waiting[0][0] <= now:
            due, _, f = heapq.heappop(waiting)
            if f.frames is not None:
                out.append(self._sample(f, due))
        dns = self.rules.dns_timeout
        for table in (self._tcp, self._udp, self._icmp, self._ip):
            while table:
                key, f = next(iter(table.items()))
                end = f.ended_by(now, dns)
                if end is None:  # the oldest activity of this table: every later flow is younger
                    break
                del table[key]
                self._ended(f, out, end)
        # A DNS flow ends at one of its own checks, not in the order of last activity; but none that has
        # been idle for less than dns_timeout - 1 s can have ended, and those are at the end of the table.
        ended = []
        for key, f in self._dns.items():
            if now - f.last < dns - 1.0:
                break
            end = f.ended_by(now, dns)
            if end is not None:
                ended.append((key, f, end))
        for key, f, end in ended:
            del self._dns[key]
            self._ended(f, out, end)
        return out

    def samples(self, frames: Iterable[tuple[float, int, bytes]]) -> Iterator[FlowSample]:
        """Every flow sample of a frame stream, in the order they become ready, then the rest at its end."""
        add = self.add
        for ts, lt, fr in frames:
            out = add(ts, lt, fr)
            if out:  # mostly empty; ``yield from`` on every frame costs more than the check
                yield from out
        yield from self.flush()

    def block_samples(
        self, blocks: Iterable[FrameBlock], shard: int = 0, shards: int = 1
    ) -> Iterator[FlowSample]:
        """``samples`` over ``capture.read_blocks``, with what array operations can tell in advance: which
        frames are plain (``plain_mask``) and at which ones ``tick`` expires flows. With ``shards`` > 1,
        only the flows of ``shard`` (``shard_of``): this shard's frames and those expiry frames of other
        shards take a Python step each; every other frame is skipped, so a shard costs little more than
        its share of frames."""
        place, tick = self._place, self.tick
        for blk in blocks:
            buf, lt, base, n = blk.buf, blk.linktype, self.index, len(blk)
            ts, start, end = blk.ts.tolist(), blk.start.tolist(), blk.end.tolist()
            first = _first_bytes(blk) if lt == LINKTYPE_ETHERNET else None
            plain_np = plain_mask(blk, first)
            expiring, now = [], self._now
            for i, t in enumerate(ts):  # the frames at which ``tick`` expires flows
                if t - now >= 1.0 or t < now:
                    now = t
                    expiring.append(i)
            if shards == 1:
                own = [True] * n
                steps: range | list[int] = range(n)
            else:
                mine = shard_array(blk, shards, plain_np, first) == shard
                own = mine.tolist()
                mine[expiring] = True
                steps = np.flatnonzero(mine).tolist()
            plain, expire_at = plain_np.tolist(), set(expiring)
            for i in steps:
                t = ts[i]
                if i in expire_at:
                    self.index = base + i
                    out = tick(t)
                else:
                    self.index = base + i + 1
                    out = []
                if own[i]:
                    out = place(t, lt, buf[start[i] : end[i]], plain[i], out)
                if out:
                    yield from out
            self.index = base + n
        yield from self.flush()

    def flush(self) -> list[FlowSample]:
        """End of input: hand out every flow that has not been handed out yet (Zeek does at termination),
        in order of first packet."""
        self.index += 1
        out: list[FlowSample] = []
        for table in self._tables:
            for f in table.values():
                self._ended(f, out, min(f.ts + self.spec.max_wait, max(self._ts, f.last)))
            table.clear()
        self._waiting.clear()
        out.sort(key=_order)
        return out


def _order(s: FlowSample) -> tuple[int, int]:
    return s.order


def flows_from_frames(
    frames: Iterable[tuple[float, int, bytes]], spec: PrefixSpec, rules: FlowRules | None = None
) -> Iterator[FlowSample]:
    """All flow samples of a frame stream, in the order they become ready."""
    return FlowTable(spec, rules).samples(frames)

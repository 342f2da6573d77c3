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

import base64
import dataclasses
import hashlib
import heapq
import ipaddress
import math
import socket
import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .capture import FrameBlock
from .conn import ConnRecord, conn_state, tcp_history_letter
from .packets import (
    ICMP6_QUERY_PAIRS,
    ICMP_QUERY_PAIRS,
    LINKTYPE_ETHERNET,
    PROTO_ICMP,
    PROTO_ICMP6,
    PROTO_NAMES,
    PROTO_TCP,
    PROTO_UDP,
    SCAN_PACKETS,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    Frame,
    Packet,
    PrefixSpec,
    counts_for_prefix,
    ip_offset,
    parse_ip,
    tcp_seq_ack,
)

DEFAULT_IDLE_TIMEOUT = 60.0  # Zeek's udp_inactivity_timeout and icmp_inactivity_timeout
DNS_PORTS = frozenset({53, 137, 5353, 5355})  # UDP ports Zeek's DNS analyzer takes (base/protocols/dns)
TUNNEL_PROTOS = frozenset({4, 41, 47})  # IP-in-IP, IPv6-in-IPv4, GRE: Zeek decapsulates them


@dataclass(frozen=True)
class FlowRules:
    """Where one flow ends and the next begins: Zeek's connection timeouts (``init-bare.zeek``). A site
    that changes them in Zeek sets the same values here (config ``flows:``)."""

    tcp_timeout: float = 300.0  # tcp_inactivity_timeout
    udp_timeout: float = DEFAULT_IDLE_TIMEOUT  # udp_inactivity_timeout
    icmp_timeout: float = DEFAULT_IDLE_TIMEOUT  # icmp_inactivity_timeout
    other_timeout: float = DEFAULT_IDLE_TIMEOUT  # unknown_ip_inactivity_timeout
    dns_timeout: float = 10.0  # dns_session_timeout

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not 0 < v <= 86400:
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
    handshake: bool | None = None  # TCP handshake demonstrably completed (None: not computed yet)
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
    synack_seq: int = -1  # the responder's SYN-ACK sequence number, while the prefix is collected
    handshake: bool = False  # the initiator acknowledged that SYN-ACK (its address is not spoofed)
    # connection-summary counters, kept only when the table was made with records=True
    opk: int = 0
    rpk: int = 0
    ob: int = 0
    rb: int = 0
    oib: int = 0
    rib: int = 0
    hist: str = ""

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


def icmp_counterpart(proto: int, itype: int, code: int) -> tuple[int, bool]:
    """Zeek's ``ICMP4_counterpart``/``ICMP6_counterpart``: (the counterpart type, False) for messages
    with a reply type, else (the code, True: one-way)."""
    pairs = ICMP_QUERY_PAIRS if proto == PROTO_ICMP else ICMP6_QUERY_PAIRS
    other = pairs.get(itype)
    return (other, False) if other is not None else (code, True)


def _flow_key(p: Packet) -> tuple[object, ...] | None:
    """The flow a packet belongs to, as Zeek keys connections; None for what Zeek makes no connection of
    from a captured frame (fragments, decapsulated tunnels)."""
    if p.fragmented or p.proto in TUNNEL_PROTOS:
        return None
    if p.proto in (PROTO_TCP, PROTO_UDP):
        # address + port as bytes (the same key ``FlowTable.add``'s fast path builds from raw frames)
        a, b = p.src + p.sport.to_bytes(2, "big"), p.dst + p.dport.to_bytes(2, "big")
        return (p.proto, a, b) if a <= b else (p.proto, b, a)
    if p.proto in (PROTO_ICMP, PROTO_ICMP6):
        other, one_way = icmp_counterpart(p.proto, p.sport, p.dport)
        a, b = p.src + p.sport.to_bytes(2, "big"), p.dst + other.to_bytes(2, "big")
        if one_way:
            return (p.proto, a, b, 1)
        return (p.proto, a, b) if a <= b else (p.proto, b, a)
    a3, b3 = (p.src, p.dst) if p.src <= p.dst else (p.dst, p.src)
    return (p.proto, a3, b3)


def _ports(p: Packet) -> tuple[int, int]:
    """The flow's (orig_p, resp_p) as Zeek's conn_id has them, from its first packet."""
    if p.proto in (PROTO_TCP, PROTO_UDP):
        return p.sport, p.dport
    if p.proto in (PROTO_ICMP, PROTO_ICMP6):
        return p.sport, icmp_counterpart(p.proto, p.sport, p.dport)[0]
    return 0, 0


def _from_initiator(f: _Flow, p: Packet) -> bool:
    """Sent by the flow's initiator (ports decide when both ends share an address)."""
    return p.src == f.src and (p.sport == f.sport or p.proto not in (PROTO_TCP, PROTO_UDP))


def addr_text(raw: bytes) -> str:
    """An address as Zeek and ``ipaddress`` write it (inet_ntop for IPv4: 5x faster, same text)."""
    return socket.inet_ntop(socket.AF_INET, raw) if len(raw) == 4 else str(ipaddress.ip_address(raw))


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
                f.ts, proto, addr_text(f.src), f.sport, addr_text(f.dst), f.dport, f.last - f.ts,
                f.opk, f.rpk, f.ob, f.rb, f.oib, f.rib, f.hist, conn_state(proto, f.hist, f.rpk),
                community_id=community_id(f.proto, f.src, f.dst, f.sport, f.dport),
            )
        )  # fmt: skip

    def _count(self, f: _Flow, p: Packet, frame: bytes, off: int) -> None:
        is_orig = _from_initiator(f, p)
        size = _ip_len(frame, off, p.version)
        letter = ""
        if p.proto == PROTO_TCP:
            letter = tcp_history_letter(p.tcp_flags, p.payload_len)
        elif p.proto == PROTO_UDP and p.payload_len > 0:
            letter = "D"
        if is_orig:
            f.opk += 1
            f.ob += p.payload_len
            f.oib += size
        else:
            f.rpk += 1
            f.rb += p.payload_len
            f.rib += size
            letter = letter.lower()
        if letter and letter not in f.hist:
            f.hist += letter

    @staticmethod
    def _track_handshake(f: _Flow, p: Packet, frame: bytes, off: int) -> None:
        sa = tcp_seq_ack(frame, off)
        if sa is None:
            return
        from_orig = p.src == f.src and p.sport == f.sport
        if not from_orig and p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK:
            f.synack_seq = sa[0]
        elif from_orig and p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_ACK and f.synack_seq >= 0:
            f.handshake = sa[1] == (f.synack_seq + 1) & 0xFFFFFFFF

    def _sample(self, f: _Flow, ready: float) -> FlowSample:
        frames = f.frames or []
        f.frames = None
        src, dst = addr_text(f.src), addr_text(f.dst)
        return FlowSample(
            f.ts, f.proto, src, f.sport, dst, f.dport, frames,
            community_id=community_id(f.proto, f.src, f.dst, f.sport, f.dport),
            handshake=f.handshake if f.proto == PROTO_TCP else False,
            ready=ready, order=(self.index, f.first),
        )  # fmt: skip

    def add(self, ts: float, linktype: int, frame: bytes) -> list[FlowSample]:
        """Account one frame; return the samples that became ready (usually none or one), in ``order``."""
        out = self.tick(ts)
        plain = linktype == LINKTYPE_ETHERNET and _plain_ipv4_tcp_udp(frame)
        return self._place(ts, linktype, frame, plain, out)

    def _place(
        self, ts: float, linktype: int, frame: bytes, plain: bool, out: list[FlowSample]
    ) -> list[FlowSample]:
        """``add`` after its ``tick``; ``plain``: ``_plain_ipv4_tcp_udp`` of an Ethernet frame (the block
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
        key = _flow_key(p)
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
            sport, dport = _ports(p)
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
            if f.frames is not None and p.tcp_flags & TCP_ACK and not f.handshake:
                self._track_handshake(f, p, frame, off)
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
        it builds the same key as ``_flow_key`` straight from the bytes and only refreshes the flow's
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
                steps = range(n)
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


def _plain_ipv4_tcp_udp(frame: bytes) -> bool:
    """An Ethernet frame (no VLAN tag) with IPv4 without options, not a fragment, carrying TCP or UDP with
    its ports captured: the layout the fast paths read straight from the bytes."""
    return (
        len(frame) >= 38
        and frame[12] == 8
        and frame[13] == 0
        and frame[14] == 0x45
        and (frame[23] == PROTO_TCP or frame[23] == PROTO_UDP)
        and not frame[20] & 0x3F
        and not frame[21]
    )


def _order(s: FlowSample) -> tuple[int, int]:
    return s.order


_M64 = (1 << 64) - 1
_MIX_A, _MIX_B = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F


def _mix48(lo: int, hi: int) -> int:
    """Hash of a flow's sorted pair of 48-bit endpoints (IPv4 address + port); ``shard_array`` computes
    the same with numpy's wrapping uint64 arithmetic."""
    return (((lo * _MIX_A & _M64) ^ hi) * _MIX_B & _M64) >> 33


def shard_of(linktype: int, frame: bytes, shards: int) -> int:
    """Which of ``shards`` flow tables a frame belongs to: the same for every packet of a flow (both
    directions), so shards can build their flows independently. Frames that belong to no flow (not IP,
    malformed) go to shard 0, which counts them.

    A hash that mixes every byte of the flow's sorted address(+port) pair keeps the shards' *packet*
    counts even (an XOR of a few low bytes left 43%/57% of lab-dev's packets in two shards, and a
    worker's cost follows its packets, not its flows)."""
    if linktype == LINKTYPE_ETHERNET and _plain_ipv4_tcp_udp(frame):
        a = int.from_bytes(frame[26:30] + frame[34:36], "big")
        b = int.from_bytes(frame[30:34] + frame[36:38], "big")
        return _mix48(a, b) % shards if a <= b else _mix48(b, a) % shards
    off = ip_offset(frame, linktype)
    p = parse_ip(frame, off) if off >= 0 else None
    if p is None:
        return 0
    key = _flow_key(p)
    if key is None:  # fragments, tunnels: counted by shard 0
        return 0
    a, b = key[1], key[2]
    assert isinstance(a, bytes) and isinstance(b, bytes)
    if len(a) == 6:  # IPv4 address + port, as the fast path
        return _mix48(int.from_bytes(a, "big"), int.from_bytes(b, "big")) % shards
    return zlib.crc32(a + b) % shards  # IPv6, or an address pair only (fragments, ICMP, other)


_PLAIN_BYTES = np.arange(38)


def _first_bytes(block: FrameBlock) -> np.ndarray:
    """(n, 38) uint8: the first 38 bytes of every frame (garbage past the end of shorter frames)."""
    raw = np.frombuffer(block.buf, np.uint8)
    if not len(raw):  # only empty frames
        return np.zeros((len(block), len(_PLAIN_BYTES)), dtype=np.uint8)
    return raw[np.minimum(block.start[:, None] + _PLAIN_BYTES, len(raw) - 1)]


def plain_mask(block: FrameBlock, first: np.ndarray | None = None) -> np.ndarray:
    """``_plain_ipv4_tcp_udp`` of every frame of a block, as a bool array (all False unless Ethernet).
    ``first``: the block's ``_first_bytes``, if the caller has them."""
    if block.linktype != LINKTYPE_ETHERNET or not len(block.buf):
        return np.zeros(len(block), dtype=bool)
    h = _first_bytes(block) if first is None else first
    return (
        (block.end - block.start >= 38)
        & (h[:, 12] == 8)
        & (h[:, 13] == 0)
        & (h[:, 14] == 0x45)
        & ((h[:, 23] == PROTO_TCP) | (h[:, 23] == PROTO_UDP))
        & (h[:, 20] & 0x3F == 0)
        & (h[:, 21] == 0)
    )


def shard_array(
    block: FrameBlock, shards: int, plain: np.ndarray | None = None, first: np.ndarray | None = None
) -> np.ndarray:
    """``shard_of`` for every frame of a block: plain Ethernet/IPv4/TCP-UDP frames (``plain_mask``) in
    array operations, the others one by one. ``plain`` and ``first`` (``_first_bytes``): if the caller
    has them already."""
    n = len(block)
    out = np.zeros(n, dtype=np.int64)
    if plain is None:
        plain = plain_mask(block, first)
    if plain.any():
        h = _first_bytes(block) if first is None else first
        ends = np.zeros((n, 2, 8), dtype=np.uint8)  # big-endian uint64: 0, 0, address, port
        ends[:, 0, 2:6], ends[:, 0, 6:8] = h[:, 26:30], h[:, 34:36]
        ends[:, 1, 2:6], ends[:, 1, 6:8] = h[:, 30:34], h[:, 36:38]
        pair = ends.view(">u8").reshape(n, 2).astype(np.uint64)
        lo, hi = pair.min(axis=1), pair.max(axis=1)
        mixed = ((lo * np.uint64(_MIX_A)) ^ hi) * np.uint64(_MIX_B) >> np.uint64(33)
        out[plain] = (mixed[plain] % np.uint64(shards)).astype(np.int64)
    buf, lt = block.buf, block.linktype
    for i in np.flatnonzero(~plain).tolist():
        out[i] = shard_of(lt, buf[block.start[i] : block.end[i]], shards)
    return out


def flows_from_frames(
    frames: Iterable[tuple[float, int, bytes]], spec: PrefixSpec, rules: FlowRules | None = None
) -> Iterator[FlowSample]:
    """All flow samples of a frame stream, in the order they become ready."""
    return FlowTable(spec, rules).samples(frames)


# --- Community ID v1 (https://github.com/corelight/community-id-spec) -------------------------------

_ICMP4_CID = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
_ICMP6_CID = {
    128: 129,
    129: 128,
    133: 134,
    134: 133,
    135: 136,
    136: 135,
    130: 131,
    131: 130,
    139: 140,
    140: 139,
}


def community_id(proto: int, src: bytes, dst: bytes, sport: int, dport: int, seed: int = 0) -> str:
    """Community ID v1 of a flow; ``sport``/``dport`` hold ICMP type/code for ICMP."""
    one_way = False
    if proto in (PROTO_ICMP, PROTO_ICMP6):
        table = _ICMP4_CID if proto == PROTO_ICMP else _ICMP6_CID
        if sport in table:
            dport = table[sport]
        else:
            one_way = True
    if not one_way and (src, sport) > (dst, dport):
        src, dst, sport, dport = dst, src, dport, sport
    h = hashlib.sha1(struct.pack("!H", seed) + src + dst + struct.pack("!BBHH", proto, 0, sport, dport))
    return "1:" + base64.b64encode(h.digest()).decode("ascii")

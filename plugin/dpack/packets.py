"""Packet bytes -> model input: link-layer stripping, header parsing, masking, prefix encoding.

This module is the single place where packet bytes are interpreted. ``encode_flow`` is the one pure
function that turns a flow's frames into the model's input; training, offline scoring and live scoring
(frames sent by Zeek) all call it, so the model sees exactly the same bytes everywhere.

Masking (what is zeroed before the model sees a packet, and why)
-----------------------------------------------------------------
The model must learn *how* hosts talk, never *who* talks; and it must not learn values that are random
per connection (they only add noise to the reconstruction error and raise false alarms).

IPv4 header
  * ``ip.id`` (bytes 4-5): a per-host counter or random value; identifies the sender, carries no behaviour.
  * ``ip.sum`` (10-11): derived from the addresses, so it would leak them.
  * ``ip.src``/``ip.dst`` (12-19): the addresses themselves.
  * IPv4 options (20 .. IHL*4): record-route and timestamp options carry addresses.
IPv6 header
  * flow label (low 20 bits of bytes 1-3): random per flow.
  * ``ip6.src``/``ip6.dst`` (8-39): the addresses.
  * routing header data (addresses) and the fragment header's identification.
TCP / UDP
  * the initiator's port (the client's ephemeral port; random). The responder's port is kept, it names the
    service, which is behaviour, unless it is in the dynamic range (>= 32768, where Linux picks ephemeral
    ports and servers pick passive-FTP or RPC callback ports): there it is as random as a client port.
  * ``tcp.seq``/``tcp.ack``: random initial sequence numbers.
  * checksums: they cover a pseudo-header with the addresses.
  * the TCP timestamp option's TSval/TSecr: random per-connection offsets on Linux.
ICMP / ICMPv6
  * checksum; the echo identifier (random per process, plays the role of a port);
  * the IP header quoted inside error messages is masked like an outer header (it holds the addresses);
  * the bodies of ICMPv6 neighbour-discovery messages (133-137): they carry addresses.
Not masked: payload bytes. An address written as text in a payload (an HTTP ``Host: 10.0.0.1`` header)
stays visible; rewriting addresses in the IP headers leaves verdicts unchanged, which the tests check.

Prefix policies
---------------
``first``   the first N packets of the flow in arrival order (the paper's choice).
``payload`` the flow's opening packet (for TCP the SYN, which keeps the handshake's header facts:
            window, options, TTL) and then the next N-1 packets that carry transport payload or close the
            connection (FIN/RST); SYN-ACKs and bare ACKs are skipped. On a real TCP stack the first two
            packets of every connection are SYN and SYN-ACK, so with ``first`` at N=2 a brute-force login
            looks like any other login; ``payload`` sees the first data packet instead.
For UDP and ICMP every packet counts under both policies.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# pcap LINKTYPE_* values. Zeek's ``get_current_packet()$link_type`` reports the same numbers.
LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in host byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_BSD12 = 12  # DLT_RAW on most BSDs / OpenBSD
LINKTYPE_RAW_BSD14 = 14
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108  # OpenBSD loopback: 4-byte address family in network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
SUPPORTED_LINKTYPES = frozenset(
    {
        LINKTYPE_NULL,
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW_BSD12,
        LINKTYPE_RAW_BSD14,
        LINKTYPE_RAW,
        LINKTYPE_LOOP,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_LINUX_SLL2,
    }
)

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN_TAGS = frozenset({0x8100, 0x88A8, 0x9100, 0x9200})
_MAX_VLAN_TAGS = 4
_AF_INET6 = frozenset({10, 24, 28, 30})  # Linux, NetBSD/OpenBSD, FreeBSD, macOS

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMP6 = 58
PROTO_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "icmp6", 132: "sctp"}

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

_IPV6_EXT = frozenset({0, 43, 44, 60, 51, 135, 139, 140})
_MAX_IPV6_EXT = 8
# ICMP query types whose reply shares the identifier (so request and reply form one flow).
ICMP_QUERY_PAIRS = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17, 10: 9, 9: 10}
ICMP6_QUERY_PAIRS = {128: 129, 129: 128, 130: 131, 131: 130, 133: 134, 134: 133, 135: 136, 136: 135}
_ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})
_ICMP6_ERRORS = frozenset({1, 2, 3, 4})
_ICMP6_ND = frozenset({133, 134, 135, 136, 137})

POLICIES = ("first", "payload")
DYNAMIC_PORT_HIGH_BYTE = 0x80  # ports >= 32768

_u16 = struct.Struct("!H").unpack_from


class Packet(NamedTuple):
    """The header facts of one IP packet that the flow table needs (no copies of the bytes)."""

    version: int
    proto: int
    src: bytes  # 4 or 16 bytes
    dst: bytes
    sport: int  # ICMP: type
    dport: int  # ICMP: code
    ident: int  # ICMP query identifier, else 0
    tcp_flags: int
    payload_len: int  # transport payload length (from the IP length fields, not the captured length)
    fragment: bool  # a non-first fragment: no transport header
    fragmented: bool = False  # any piece of a fragmented datagram (more-fragments flag or an offset)


def ip_offset(frame: bytes, linktype: int) -> int:
    """Offset of the IP header in ``frame``, or -1 if the frame carries no IPv4/IPv6 packet."""
    n = len(frame)
    if linktype == LINKTYPE_ETHERNET:
        if n < 14:
            return -1
        etype = (frame[12] << 8) | frame[13]
        off = 14
        tags = 0
        while etype in ETH_VLAN_TAGS:
            tags += 1
            if tags > _MAX_VLAN_TAGS or n < off + 4:
                return -1
            etype = (frame[off + 2] << 8) | frame[off + 3]
            off += 4
        if etype == ETH_IPV4 or etype == ETH_IPV6:
            return off
        return -1
    if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_BSD12, LINKTYPE_RAW_BSD14, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return 0 if n and frame[0] >> 4 in (4, 6) else -1
    if linktype == LINKTYPE_LINUX_SLL:
        if n < 16:
            return -1
        etype = (frame[14] << 8) | frame[15]
        return 16 if etype in (ETH_IPV4, ETH_IPV6) else -1
    if linktype == LINKTYPE_LINUX_SLL2:
        if n < 20:
            return -1
        etype = (frame[0] << 8) | frame[1]
        return 20 if etype in (ETH_IPV4, ETH_IPV6) else -1
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if n < 5:
            return -1
        return 4 if frame[4] >> 4 in (4, 6) else -1
    return -1


def parse_ip(buf: bytes, off: int = 0) -> Packet | None:
    """Parse the IP packet that starts at ``buf[off]``; None if it is malformed or cut too short."""
    n = len(buf) - off
    if n < 20:
        return None
    version = buf[off] >> 4
    if version == 4:
        ihl = (buf[off] & 0x0F) * 4
        if ihl < 20 or n < ihl:
            return None
        total = _u16(buf, off + 2)[0]
        if total < ihl:
            return None
        proto = buf[off + 9]
        frag = _u16(buf, off + 6)[0]
        nonfirst = (frag & 0x1FFF) != 0
        pieces = (frag & 0x3FFF) != 0  # MF or an offset
        src = buf[off + 12 : off + 16]
        dst = buf[off + 16 : off + 20]
        l4 = off + ihl
        l4_len = total - ihl
    elif version == 6:
        if n < 40:
            return None
        plen = _u16(buf, off + 4)[0]
        proto = buf[off + 6]
        src = buf[off + 8 : off + 24]
        dst = buf[off + 24 : off + 40]
        l4 = off + 40
        l4_len = plen
        nonfirst = pieces = False
        for _ in range(_MAX_IPV6_EXT):
            if proto not in _IPV6_EXT:
                break
            if l4 + 8 > len(buf):
                return None
            nxt = buf[l4]
            if proto == 44:  # fragment header: fixed 8 bytes
                fo = _u16(buf, l4 + 2)[0]
                nonfirst = (fo & 0xFFF8) != 0
                pieces = (fo & 0xFFF9) != 0  # M flag or an offset (an atomic fragment header is neither)
                hlen = 8
            elif proto == 51:  # AH: length in 4-byte units, minus 2
                hlen = (buf[l4 + 1] + 2) * 4
            else:
                hlen = (buf[l4 + 1] + 1) * 8
            proto = nxt
            l4 += hlen
            l4_len -= hlen
            if nonfirst:
                break
        else:
            if proto in _IPV6_EXT:
                return None  # more extension headers than any sane packet has
        if l4_len < 0:
            return None
    else:
        return None

    sport = dport = ident = flags = 0
    payload = max(l4_len, 0)
    if not nonfirst:
        have = len(buf) - l4
        if proto == PROTO_TCP:
            if have < 14:
                return None
            sport, dport = struct.unpack_from("!HH", buf, l4)
            doff = (buf[l4 + 12] >> 4) * 4
            flags = buf[l4 + 13]
            payload = max(l4_len - doff, 0)
        elif proto == PROTO_UDP:
            if have < 4:
                return None
            sport, dport = struct.unpack_from("!HH", buf, l4)
            payload = max(l4_len - 8, 0)
        elif proto in (PROTO_ICMP, PROTO_ICMP6):
            if have < 2:
                return None
            sport, dport = buf[l4], buf[l4 + 1]
            pairs = ICMP_QUERY_PAIRS if proto == PROTO_ICMP else ICMP6_QUERY_PAIRS
            if sport in pairs and have >= 6:
                ident = _u16(buf, l4 + 4)[0]
            payload = max(l4_len - 8, 0)
    return Packet(
        version, proto, bytes(src), bytes(dst), sport, dport, ident, flags, payload, nonfirst, pieces
    )


def counts_for_prefix(pkt: Packet, first_in_flow: bool, policy: str) -> bool:
    """Whether ``pkt`` takes one of the flow's N prefix slots under ``policy`` (see module docstring)."""
    if first_in_flow or policy == "first" or pkt.proto != PROTO_TCP or pkt.fragment:
        return True
    return pkt.payload_len > 0 or bool(pkt.tcp_flags & (TCP_FIN | TCP_RST))


DEFAULT_MAX_WAIT = 5.0  # seconds; Zeek's DPack::max_wait
# A flow's prefix is chosen among its first SCAN_PACKETS packets (Zeek's DPack::scan_packets: the
# packet-count thresholds through which Zeek hands dpack a connection's first packets).
SCAN_PACKETS = 16


@dataclass(frozen=True)
class PrefixSpec:
    """What the model reads of a flow. Stored in the model file; a mismatch with the export is refused.

    ``max_wait``: a flow whose prefix is not complete this many seconds after its first packet is handed
    out with what it has (Zeek's ``DPack::max_wait``): packets after that never reach the model, live or
    offline. ``inf`` for models trained before it existed (they are refused by an exporter that waits)."""

    n_packets: int = 2
    n_bytes: int = 80
    policy: str = "payload"
    masking: str = "v1"  # the masking rules in this module's docstring; bump when they change
    max_wait: float = DEFAULT_MAX_WAIT

    def __post_init__(self) -> None:
        if not 1 <= self.n_packets <= 64:
            raise ValueError(f"packets per flow must be in 1..64, got {self.n_packets}")
        if not 20 <= self.n_bytes <= 1500:
            raise ValueError(f"bytes per packet must be in 20..1500, got {self.n_bytes}")
        if self.policy not in POLICIES:
            raise ValueError(f"prefix policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.masking != MASKING_VERSION:
            raise ValueError(
                f"masking {self.masking!r} is not supported (this dpack masks as {MASKING_VERSION})"
            )
        if not self.max_wait > 0:  # also refuses NaN
            raise ValueError(f"max_wait must be a positive number of seconds, got {self.max_wait}")

    def as_dict(self) -> dict[str, int | str | float]:
        return {
            "n_packets": self.n_packets,
            "n_bytes": self.n_bytes,
            "policy": self.policy,
            "masking": self.masking,
            "max_wait": self.max_wait,
        }

    def describe(self) -> str:
        return (f"packets={self.n_packets} bytes={self.n_bytes} policy={self.policy} "
                f"max_wait={self.max_wait:g}s")  # fmt: skip


MASKING_VERSION = "v1"


class Frame(NamedTuple):
    """One captured frame as the flow table or Zeek hands it over."""

    linktype: int
    data: bytes  # starts at the link layer
    is_orig: bool  # sent by the flow's initiator


class FlowInput(NamedTuple):
    """The model input of one flow."""

    data: np.ndarray  # (N, L) uint8, masked packet bytes from the IP header on, zero-padded
    direction: np.ndarray  # (N,) int8: +1 from the initiator, -1 from the responder, 0 no packet


# Zero runs for fixed-size fields. ``_mask_ip`` writes them with plain slice assignments: on the buffer
# ``mask_packet`` pads with _PAD, every fixed IPv4/TCP/UDP/ICMP field offset (IHL <= 60, quoted headers
# included) lies inside it; a write past the end could only extend the buffer, which is cut back after.
_Z2, _Z8, _Z10 = bytes(2), bytes(8), bytes(10)
_PAD = bytes(192)


def _zero(b: bytearray, start: int, stop: int) -> None:
    """Zero b[start:stop], clipped to the buffer."""
    stop = min(stop, len(b))
    if start < stop:
        b[start:stop] = bytes(stop - start)


def _mask_tcp_options(b: bytearray, opt_start: int, opt_end: int) -> None:
    i = opt_start
    end = min(opt_end, len(b))
    while i < end:
        kind = b[i]
        if kind == 0:  # end of option list
            return
        if kind == 1:  # NOP
            i += 1
            continue
        if i + 1 >= end:
            return
        olen = b[i + 1]
        if olen < 2:
            return
        if kind == 8:  # timestamps: kind, len, TSval(4), TSecr(4)
            _zero(b, i + 2, i + olen)
        i += olen


def _mask_ip(b: bytearray, off: int, orig_port_at: int | None, depth: int = 0) -> None:
    """Mask the IP packet starting at ``b[off]`` in place (see module docstring).

    ``orig_port_at`` is 0 to zero the transport source port, 2 to zero the destination port (the
    initiator's port in a responder packet), or None to zero neither.
    """
    if off >= len(b):
        return
    version = b[off] >> 4
    if version == 4:
        ihl = max((b[off] & 0x0F) * 4, 20)
        b[off + 4 : off + 6] = _Z2  # ip.id
        b[off + 10 : off + 20] = _Z10  # ip.sum, ip.src, ip.dst
        _zero(b, off + 20, off + ihl)  # options
        proto = b[off + 9] if off + 9 < len(b) else -1
        nonfirst = off + 7 < len(b) and (((b[off + 6] << 8) | b[off + 7]) & 0x1FFF) != 0
        l4 = off + ihl
    elif version == 6:
        if off + 1 < len(b):
            b[off + 1] &= 0xF0  # flow label: low 4 bits of byte 1 and bytes 2-3
        _zero(b, off + 2, off + 4)
        _zero(b, off + 8, off + 40)
        proto = b[off + 6] if off + 6 < len(b) else -1
        l4 = off + 40
        nonfirst = False
        for _ in range(_MAX_IPV6_EXT):
            if proto not in _IPV6_EXT or l4 + 2 > len(b):
                break
            nxt = b[l4]
            if proto == 44:
                hlen = 8
                nonfirst = l4 + 4 <= len(b) and (((b[l4 + 2] << 8) | b[l4 + 3]) & 0xFFF8) != 0
                _zero(b, l4 + 4, l4 + 8)  # identification
            elif proto == 51:
                hlen = (b[l4 + 1] + 2) * 4
                _zero(b, l4 + 4, l4 + hlen)  # SPI, sequence, ICV
            else:
                hlen = (b[l4 + 1] + 1) * 8
                if proto == 43:
                    _zero(b, l4 + 4, l4 + hlen)  # routing header: addresses
            proto = nxt
            l4 += hlen
            if nonfirst:
                break
    else:
        return
    if nonfirst or l4 >= len(b):
        return
    if proto in (PROTO_TCP, PROTO_UDP):
        if orig_port_at is not None:
            b[l4 + orig_port_at : l4 + orig_port_at + 2] = _Z2
            resp = l4 + 2 - orig_port_at
            if resp + 1 < len(b) and b[resp] >= DYNAMIC_PORT_HIGH_BYTE:
                b[resp : resp + 2] = _Z2
    if proto == PROTO_TCP:
        b[l4 + 4 : l4 + 12] = _Z8  # seq, ack
        b[l4 + 16 : l4 + 18] = _Z2  # checksum
        if l4 + 12 < len(b):
            doff = (b[l4 + 12] >> 4) * 4
            _mask_tcp_options(b, l4 + 20, l4 + doff)
    elif proto == PROTO_UDP:
        b[l4 + 6 : l4 + 8] = _Z2
    elif proto in (PROTO_ICMP, PROTO_ICMP6):
        b[l4 + 2 : l4 + 4] = _Z2  # checksum
        if l4 >= len(b):
            return
        itype = b[l4]
        queries = ICMP_QUERY_PAIRS if proto == PROTO_ICMP else ICMP6_QUERY_PAIRS
        errors = _ICMP_ERRORS if proto == PROTO_ICMP else _ICMP6_ERRORS
        if proto == PROTO_ICMP6 and itype in _ICMP6_ND:
            _zero(b, l4 + 4, len(b))
        elif itype in queries:
            _zero(b, l4 + 4, l4 + 6)  # identifier
        elif itype in errors and depth == 0:
            _mask_ip(b, l4 + 8, None, depth + 1)  # the quoted packet


def mask_packet(ip_bytes: bytes, is_orig: bool) -> bytearray:
    """A masked copy of an IP packet (bytes from the IP header on), as long as ``ip_bytes``."""
    n = len(ip_bytes)
    b = bytearray(ip_bytes) + _PAD  # header fields of a cut packet are then still in the buffer
    _mask_ip(b, 0, 0 if is_orig else 2)
    del b[n:]
    return b


def encode_flow(frames: Sequence[Frame], spec: PrefixSpec) -> FlowInput:
    """The model input of one flow: its prefix packets under ``spec``, masked, cut to L, zero-padded to N.

    ``frames`` are the flow's packets in arrival order, starting with its first packet (extra frames
    beyond the prefix are ignored; frames that are not IP, or that are malformed, are skipped).
    Pure: the same frames and spec always give the same array.
    """
    n, length = spec.n_packets, spec.n_bytes
    data, direction = bytearray(n * length), bytearray(n)
    encode_flow_into(frames, spec, data, 0, direction, 0)
    return FlowInput(
        np.frombuffer(data, dtype=np.uint8).reshape(n, length), np.frombuffer(direction, dtype=np.int8)
    )


def encode_flow_into(
    frames: Sequence[Frame], spec: PrefixSpec, data: bytearray, at: int, direction: bytearray, dat: int
) -> None:
    """``encode_flow`` writing into zeroed buffers: the N*L bytes at ``data[at:]`` and the N directions at
    ``direction[dat:]`` (int8 as bytes: 1, or 255 for -1). Batches of flows fill one buffer each, which
    saves the per-flow arrays (``dataset.encode_samples``)."""
    n, length = spec.n_packets, spec.n_bytes
    slot = 0
    first = True
    for fr in frames:
        if slot >= n:
            break
        off = ip_offset(fr.data, fr.linktype)
        if off < 0:
            continue
        pkt = parse_ip(fr.data, off)
        if pkt is None:
            continue
        if not counts_for_prefix(pkt, first, spec.policy):
            first = False
            continue
        first = False
        masked = mask_packet(fr.data[off : off + length], fr.is_orig)
        start = at + slot * length
        data[start : start + len(masked)] = masked
        direction[dat + slot] = 1 if fr.is_orig else 255
        slot += 1


# --- field names, for explanations ------------------------------------------------------------------

_IPV4_FIELDS = [
    (0, 1, "ip.vhl"), (1, 2, "ip.tos"), (2, 4, "ip.len"), (4, 6, "ip.id"), (6, 8, "ip.frag"),
    (8, 9, "ip.ttl"), (9, 10, "ip.proto"), (10, 12, "ip.sum"), (12, 16, "ip.src"), (16, 20, "ip.dst"),
]  # fmt: skip
_IPV6_FIELDS = [
    (0, 4, "ip6.vtcfl"), (4, 6, "ip6.plen"), (6, 7, "ip6.nxt"), (7, 8, "ip6.hlim"),
    (8, 24, "ip6.src"), (24, 40, "ip6.dst"),
]  # fmt: skip
_TCP_FIELDS = [
    (0, 2, "tcp.sport"), (2, 4, "tcp.dport"), (4, 8, "tcp.seq"), (8, 12, "tcp.ack"), (12, 13, "tcp.off"),
    (13, 14, "tcp.flags"), (14, 16, "tcp.win"), (16, 18, "tcp.sum"), (18, 20, "tcp.urp"),
]  # fmt: skip
_UDP_FIELDS = [(0, 2, "udp.sport"), (2, 4, "udp.dport"), (4, 6, "udp.len"), (6, 8, "udp.sum")]
_ICMP_FIELDS = [(0, 1, "icmp.type"), (1, 2, "icmp.code"), (2, 4, "icmp.sum"), (4, 8, "icmp.rest")]


# Every field name explanations can use, with a stable number (grows as names are first seen; finite:
# header fields, ``payload[k]`` for k < L, a few extension-header names).
FIELD_VOCAB: dict[str, int] = {}
FIELD_NAMES: list[str] = []


def _field_id(name: str) -> int:
    i = FIELD_VOCAB.get(name)
    if i is None:
        i = FIELD_VOCAB[name] = len(FIELD_NAMES)
        FIELD_NAMES.append(name)
    return i


def field_layout(ip_bytes: bytes | np.ndarray) -> np.ndarray:
    """``field_names`` as numbers into ``FIELD_NAMES`` (one per byte); cached by header shape.

    The names of a packet's bytes depend only on a few header bytes (version/IHL, protocol, TCP data
    offset, total length), so packets of the same shape share one layout; explanations of thousands of
    flows then cost one dictionary lookup per packet instead of a walk over every byte.
    """
    b = bytes(ip_bytes)
    v = b[0] >> 4 if b else 0
    if v == 4 and len(b) >= 20:
        ihl = max((b[0] & 0x0F) * 4, 20)
        key = (len(b), b[0], b[9], b[ihl + 12] if len(b) > ihl + 12 else -1, min(_u16(b, 2)[0], len(b)))
        hit = _LAYOUTS.get(key)
        if hit is None:
            if len(_LAYOUTS) > 4096:  # bounded: hostile traffic cannot grow it without limit
                _LAYOUTS.clear()
            hit = _LAYOUTS[key] = _layout(b)
        return hit
    return _layout(b)


_LAYOUTS: dict[tuple[int, ...], np.ndarray] = {}


def _layout(b: bytes) -> np.ndarray:
    return np.fromiter((_field_id(n) for n in field_names(b)), dtype=np.intp, count=len(b))


def field_names(ip_bytes: bytes | np.ndarray) -> list[str]:
    """A field name for every byte of a (masked, possibly padded) packet, e.g. ``tcp.flags``."""
    b = bytes(ip_bytes)
    names = ["pad"] * len(b)
    if not b or b[0] >> 4 not in (4, 6):
        return names

    def put(base: int, table: list[tuple[int, int, str]]) -> None:
        for start, stop, name in table:
            for i in range(base + start, min(base + stop, len(b))):
                names[i] = name

    if b[0] >> 4 == 4:
        put(0, _IPV4_FIELDS)
        ihl = max((b[0] & 0x0F) * 4, 20)
        for i in range(20, min(ihl, len(b))):
            names[i] = "ip.opt"
        proto = b[9] if len(b) > 9 else -1
        l4 = ihl
        total = _u16(b, 2)[0] if len(b) >= 4 else len(b)
    else:
        put(0, _IPV6_FIELDS)
        proto = b[6] if len(b) > 6 else -1
        l4 = 40
        total = 40 + (_u16(b, 4)[0] if len(b) >= 6 else 0)
        for _ in range(_MAX_IPV6_EXT):
            if proto not in _IPV6_EXT or l4 + 2 > len(b):
                break
            hlen = 8 if proto == 44 else ((b[l4 + 1] + 2) * 4 if proto == 51 else (b[l4 + 1] + 1) * 8)
            for i in range(l4, min(l4 + hlen, len(b))):
                names[i] = f"ip6.ext{proto}"
            proto = b[l4]
            l4 += hlen
    if proto == PROTO_TCP:
        put(l4, _TCP_FIELDS)
        doff = (b[l4 + 12] >> 4) * 4 if l4 + 12 < len(b) else 20
        for i in range(l4 + 20, min(l4 + doff, len(b))):
            names[i] = "tcp.opt"
        data = l4 + max(doff, 20)
    elif proto == PROTO_UDP:
        put(l4, _UDP_FIELDS)
        data = l4 + 8
    elif proto in (PROTO_ICMP, PROTO_ICMP6):
        put(l4, _ICMP_FIELDS)
        data = l4 + 8
    else:
        data = l4
    for i in range(data, min(len(b), max(total, data))):
        names[i] = f"payload[{i - data}]"
    return names


def tcp_seq_ack(buf: bytes, off: int) -> tuple[int, int] | None:
    """(seq, ack) of the TCP segment in the IPv4/IPv6 packet at ``buf[off]`` (no IPv6 extension headers)."""
    v = buf[off] >> 4
    if v == 4:
        l4 = off + (buf[off] & 0x0F) * 4
    elif v == 6 and len(buf) > off + 6 and buf[off + 6] == PROTO_TCP:
        l4 = off + 40
    else:
        return None
    if l4 + 12 > len(buf):
        return None
    return struct.unpack_from("!II", buf, l4 + 4)  # type: ignore[return-value]


def tcp_handshake_completed(frames: Sequence[Frame]) -> bool:
    """Whether a TCP flow's initiator demonstrably received the responder's packets - i.e. its address is
    not spoofed. Evidence, from the raw (unmasked) frames of the prefix: an initiator packet with ACK whose
    acknowledgement number lies within 64 KiB at or after the sequence number of a responder packet, or a
    responder packet acknowledging the initiator's SYN together with a later initiator ACK carrying data.
    A blind spoofer would have to guess the responder's initial sequence number (about 1 in 65,536)."""
    syn_seq = None
    resp_seqs: list[int] = []
    resp_acked_syn = False
    orig_acks: list[tuple[int, bool]] = []  # (ack number, carries payload)
    for fr in frames:
        off = ip_offset(fr.data, fr.linktype)
        if off < 0:
            continue
        p = parse_ip(fr.data, off)
        if p is None or p.proto != PROTO_TCP or p.fragment:
            continue
        sa = tcp_seq_ack(fr.data, off)
        if sa is None:
            continue
        seq, ack = sa
        flags = p.tcp_flags
        if fr.is_orig:
            if flags & TCP_SYN and not flags & TCP_ACK:
                syn_seq = seq
            elif flags & TCP_ACK:
                orig_acks.append((ack, p.payload_len > 0))
        else:
            resp_seqs.append(seq)
            if syn_seq is not None and flags & TCP_ACK and ack == (syn_seq + 1) & 0xFFFFFFFF:
                resp_acked_syn = True
    for a, _ in orig_acks:
        if any((a - s) & 0xFFFFFFFF <= 65536 for s in resp_seqs):
            return True
    return resp_acked_syn and any(data for _, data in orig_acks)

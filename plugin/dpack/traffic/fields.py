"""Names of the bytes of a (masked) packet, for explanations: ``p2.tcp.flags``, ``p3.payload[4]``."""

from __future__ import annotations

import struct

import numpy as np

from .packets import _IPV6_EXT, _MAX_IPV6_EXT, PROTO_ICMP, PROTO_ICMP6, PROTO_TCP, PROTO_UDP

_u16 = struct.Struct("!H").unpack_from

_IPV4_FIELDS = [
    (0, 1, "ip.vhl"),
    (1, 2, "ip.tos"),
    (2, 4, "ip.len"),
    (4, 6, "ip.id"),
    (6, 8, "ip.frag"),
    (8, 9, "ip.ttl"),
    (9, 10, "ip.proto"),
    (10, 12, "ip.sum"),
    (12, 16, "ip.src"),
    (16, 20, "ip.dst"),
]
_IPV6_FIELDS = [
    (0, 4, "ip6.vtcfl"),
    (4, 6, "ip6.plen"),
    (6, 7, "ip6.nxt"),
    (7, 8, "ip6.hlim"),
    (8, 24, "ip6.src"),
    (24, 40, "ip6.dst"),
]
_TCP_FIELDS = [
    (0, 2, "tcp.sport"),
    (2, 4, "tcp.dport"),
    (4, 8, "tcp.seq"),
    (8, 12, "tcp.ack"),
    (12, 13, "tcp.off"),
    (13, 14, "tcp.flags"),
    (14, 16, "tcp.win"),
    (16, 18, "tcp.sum"),
    (18, 20, "tcp.urp"),
]
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

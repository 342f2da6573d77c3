"""IP packets inside captured frames: link layers, IPv4/IPv6 headers and extension headers, the
transport header facts the flow table needs. Parsing only: what the model reads of a packet is
``encode.py``'s business, what its bytes are called ``fields.py``'s."""

from __future__ import annotations

import struct
from typing import NamedTuple

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

"""Packet bytes -> model input: prefix choice, masking, encoding. The defaults of what the model reads.

``encode_flow`` is the one pure function that turns a flow's frames into the model's input; training,
offline scoring and live scoring (frames sent by Zeek) all call it, so the model sees exactly the same
bytes everywhere. It imports neither torch nor a transport (a test holds that).

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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .packets import (
    _ICMP6_ERRORS,
    _ICMP6_ND,
    _ICMP_ERRORS,
    _IPV6_EXT,
    _MAX_IPV6_EXT,
    ICMP6_QUERY_PAIRS,
    ICMP_QUERY_PAIRS,
    PROTO_ICMP,
    PROTO_ICMP6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_FIN,
    TCP_RST,
    Packet,
    ip_offset,
    parse_ip,
)

POLICIES = ("first", "payload")
DYNAMIC_PORT_HIGH_BYTE = 0x80  # ports >= 32768


def counts_for_prefix(pkt: Packet, first_in_flow: bool, policy: str) -> bool:
    """Whether ``pkt`` takes one of the flow's N prefix slots under ``policy`` (see module docstring)."""
    if first_in_flow or policy == "first" or pkt.proto != PROTO_TCP or pkt.fragment:
        return True
    return pkt.payload_len > 0 or bool(pkt.tcp_flags & (TCP_FIN | TCP_RST))


# What the model reads of a flow by default: the one place these are defined. The CLI, the config, the
# shipped model and Zeek's DPack::packets/packet_bytes/policy/max_wait defaults all hold these values
# (tests/test_layout.py checks Zeek's and the shipped model's).
DEFAULT_PACKETS = 3  # N: a brute-force login and slowloris need the third selected packet (README)
DEFAULT_BYTES = 80  # L: from the IP header on; IPv4 + TCP with options + the first payload bytes
DEFAULT_POLICY = "payload"  # one round trip earlier than "first" for the same detection
DEFAULT_MAX_WAIT = 5.0  # seconds; Zeek's DPack::max_wait
# A flow's prefix is chosen among its first SCAN_PACKETS packets (Zeek's DPack::scan_packets: the
# packet-count thresholds through which Zeek hands dpack a connection's first packets).
SCAN_PACKETS = 16
MASKING_VERSION = "v1"


@dataclass(frozen=True)
class PrefixSpec:
    """What the model reads of a flow. Stored in the model file; a mismatch with the export is refused.

    ``max_wait``: a flow whose prefix is not complete this many seconds after its first packet is handed
    out with what it has (Zeek's ``DPack::max_wait``): packets after that never reach the model, live or
    offline. ``inf`` for models trained before it existed (they are refused by an exporter that waits)."""

    n_packets: int = DEFAULT_PACKETS
    n_bytes: int = DEFAULT_BYTES
    policy: str = DEFAULT_POLICY
    masking: str = MASKING_VERSION  # the masking rules in this module's docstring; bump when they change
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
        return (
            f"packets={self.n_packets} bytes={self.n_bytes} policy={self.policy} max_wait={self.max_wait:g}s"
        )


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
    frames: Sequence[Frame],
    spec: PrefixSpec,
    data: bytearray,
    data_at: int,
    direction: bytearray,
    direction_at: int,
) -> None:
    """``encode_flow`` writing into zeroed buffers: the N*L bytes at ``data[data_at:]`` and the N directions
    at ``direction[direction_at:]`` (int8 as bytes: 1, or 255 for -1). Batches of flows fill one buffer
    each, which saves the per-flow arrays (``prefix.flowset.encode_samples``)."""
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
        start = data_at + slot * length
        data[start : start + len(masked)] = masked
        direction[direction_at + slot] = 1 if fr.is_orig else 255
        slot += 1

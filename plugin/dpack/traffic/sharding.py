"""Which shard of a capture a frame belongs to: the same for every packet of a flow (both directions),
so that shards can build their flows independently - ``dpack score`` on several cores. Frames that belong
to no flow (not IP, malformed) go to shard 0, which counts them. For blocks of frames, array operations
tell each shard which frames are its own (``shard_array``) and which are plain Ethernet/IPv4/TCP-UDP
(``plain_mask``), so a shard takes a Python step only for its own frames."""

from __future__ import annotations

import zlib

import numpy as np

from .capture import FrameBlock
from .keys import flow_key
from .packets import LINKTYPE_ETHERNET, PROTO_TCP, PROTO_UDP, ip_offset, parse_ip


def plain_tcp_udp(frame: bytes) -> bool:
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
    if linktype == LINKTYPE_ETHERNET and plain_tcp_udp(frame):
        a = int.from_bytes(frame[26:30] + frame[34:36], "big")
        b = int.from_bytes(frame[30:34] + frame[36:38], "big")
        return _mix48(a, b) % shards if a <= b else _mix48(b, a) % shards
    off = ip_offset(frame, linktype)
    p = parse_ip(frame, off) if off >= 0 else None
    if p is None:
        return 0
    key = flow_key(p)
    if key is None:  # fragments, tunnels: counted by shard 0
        return 0
    lo, hi = key[1], key[2]
    assert isinstance(lo, bytes) and isinstance(hi, bytes)
    if len(lo) == 6:  # IPv4 address + port, as the fast path
        return _mix48(int.from_bytes(lo, "big"), int.from_bytes(hi, "big")) % shards
    return zlib.crc32(lo + hi) % shards  # IPv6, or an address pair only (fragments, ICMP, other)


_PLAIN_BYTES = np.arange(38)


def _first_bytes(block: FrameBlock) -> np.ndarray:
    """(n, 38) uint8: the first 38 bytes of every frame (garbage past the end of shorter frames)."""
    raw = np.frombuffer(block.buf, np.uint8)
    if not len(raw):  # only empty frames
        return np.zeros((len(block), len(_PLAIN_BYTES)), dtype=np.uint8)
    return raw[np.minimum(block.start[:, None] + _PLAIN_BYTES, len(raw) - 1)]


def plain_mask(block: FrameBlock, first: np.ndarray | None = None) -> np.ndarray:
    """``plain_tcp_udp`` of every frame of a block, as a bool array (all False unless Ethernet).
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

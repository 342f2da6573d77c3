"""Reading capture files: pcap and pcapng, optionally gzip-compressed.

Both formats are read here with ``struct``: dpkt's pcap iterator silently returns a short last record
(which must be counted), and its pcapng reader gives every packet the first interface's link type. Damage is reported, not fatal: a
file that cannot be opened raises ``CaptureError`` with one line; a file that is cut short, or whose
record header is hostile, yields what it holds before the damage and counts it in ``CaptureStats``.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import CaptureError
from ..fileio import open_regular
from .packets import SUPPORTED_LINKTYPES

log = logging.getLogger(__name__)

# magic -> (byte order, timestamp divisor)
_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e6),
    b"\xa1\xb2\xc3\xd4": (">", 1e6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e9),
    b"\xa1\xb2\x3c\x4d": (">", 1e9),
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_GZIP_MAGIC = b"\x1f\x8b"
# No link layer frame is larger; a record claiming more is damage or hostile, not data.
MAX_RECORD = 262_144
_DAMAGE = (ValueError, EOFError, OSError, zlib.error, struct.error)


@dataclass
class CaptureStats:
    """What reading a capture saw."""

    frames: int = 0
    truncated: int = 0  # 1 if the file ended inside a record or a record header was impossible
    linktype: int = -1
    short_frames: int = 0  # frames captured shorter than on the wire (snaplen)
    skipped: int = 0  # pcapng packets of interfaces with a link type dpack cannot read
    notes: list[str] = field(default_factory=list)

    def damage(self, msg: str) -> None:
        self.truncated = 1
        self.notes.append(msg)
        log.warning("%s", msg)


def _open(path: str | os.PathLike[str]) -> io.BufferedIOBase:
    fh: io.BufferedIOBase = open_regular(path, "capture file", CaptureError)  # type: ignore[assignment]
    if fh.read(2) == _GZIP_MAGIC:
        fh.seek(0)
        return gzip.GzipFile(fileobj=fh)
    fh.seek(0)
    return fh


_BLOCK = 1 << 20
_PCAPNG_BLOCK = 4096  # frames per FrameBlock from a pcapng file


@dataclass(slots=True)
class FrameBlock:
    """Consecutive frames of one capture, sharing one buffer: frame ``i`` is
    ``buf[start[i]:end[i]]``, captured at ``ts[i]``. Whole blocks let the sharded scorer decide, with
    array operations, which frames it needs at all (``flows.FlowTable.block_samples``)."""

    linktype: int
    buf: bytes
    start: np.ndarray  # int64
    end: np.ndarray  # int64
    ts: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.start)


def _pcap_blocks(
    fh: io.BufferedIOBase, path: str, head: bytes, linktype: int, stats: CaptureStats
) -> Iterator[FrameBlock]:
    """The records of a classic pcap body, one ``FrameBlock`` per read of up to 1 MiB (a read call per
    record costs more than the rest of reading). Only the walk from record to record is a Python loop;
    timestamps and lengths come out of the headers as arrays. ``read1`` in a loop: of a damaged gzip
    stream, every whole record decompressed before the damage is still handed out."""
    order, divisor = _PCAP_MAGICS[head[:4]]
    caplen_at = struct.Struct(order + "I").unpack_from
    header = np.dtype(order + "u4")
    pending = b""
    seen = 0  # records handed out before this block
    while True:
        damaged, eof, chunks, got = "", False, [pending], 0
        try:
            while got < _BLOCK:  # gzip's read1 hands out a few KiB at a time
                more = fh.read1(_BLOCK - got)
                if not more:
                    eof = True
                    break
                chunks.append(more)
                got += len(more)
        except _DAMAGE as err:
            damaged = f"capture damaged after {{n}} frames ({type(err).__name__})"
        buf = b"".join(chunks)
        size, pos, offs = len(buf), 0, []
        while size - pos >= 16:
            caplen = caplen_at(buf, pos + 8)[0]
            if caplen > MAX_RECORD:
                damaged = f"record {{m}} claims {caplen} bytes; stopping here"
                break
            if pos + 16 + caplen > size:
                break
            offs.append(pos)
            pos += 16 + caplen
        if offs:
            at = np.array(offs, dtype=np.int64)
            h = np.frombuffer(buf, np.uint8)[at[:, None] + np.arange(16)].view(header)  # (k, 4) uint32
            stats.short_frames += int(np.count_nonzero(h[:, 2] < h[:, 3]))
            yield FrameBlock(linktype, buf, at + 16, at + 16 + h[:, 2], h[:, 0] + h[:, 1] / divisor)
            seen += len(offs)
        if damaged:
            stats.damage(f"{path}: " + damaged.format(n=seen, m=seen + 1))
            return
        if eof:
            if size - pos >= 16:
                stats.damage(f"{path}: capture cut short inside record {seen + 1}")
            elif pos < size:
                stats.damage(f"{path}: capture cut short inside a record header after {seen} frames")
            return
        pending = buf[pos:]


_PCAPNG_BOM = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}  # section header byte-order magic
_PCAPNG_IDB, _PCAPNG_PB, _PCAPNG_SPB, _PCAPNG_EPB = 1, 2, 3, 6
_MAX_BLOCK = MAX_RECORD + 65_536  # a block larger than its largest frame plus options is damage


@dataclass
class _Interface:
    linktype: int
    divisor: float  # timestamp units per second (if_tsresol)
    offset: float  # seconds added to every timestamp (if_tsoffset)
    snaplen: int


def _idb(body: bytes, order: str) -> _Interface:
    """An Interface Description Block's body -> its link type and timestamp resolution and offset."""
    linktype, _, snaplen = struct.unpack_from(order + "HHI", body)
    divisor, offset, pos = 1e6, 0.0, 8
    while pos + 4 <= len(body):
        code, size = struct.unpack_from(order + "HH", body, pos)
        value = body[pos + 4 : pos + 4 + size]
        if code == 0:
            break
        if code == 9 and size >= 1:  # if_tsresol: 10^-v, or 2^-v with the top bit set
            v = value[0]
            divisor = float(2 ** (v & 0x7F)) if v & 0x80 else 10.0 ** min(v, 12)
        elif code == 14 and size >= 8:  # if_tsoffset: seconds
            offset = float(struct.unpack_from(order + "q", value)[0])
        pos += 4 + ((size + 3) & ~3)
    return _Interface(linktype, divisor, offset, snaplen)


def _pcapng_records(
    fh: io.BufferedIOBase, path: str, stats: CaptureStats
) -> Iterator[tuple[int, float, bytes]]:
    """``(linktype, ts, frame)`` of every packet of a pcapng stream, each with its own interface's link
    type and timestamp resolution (dpkt's reader took the first interface's for all of them, and read a
    capture from a second interface as 0 flows). Sections restart the interface list; blocks of other
    types are skipped; damage stops the reading, counted."""
    order: str | None = None
    ifaces: list[_Interface] = []
    last_ts = 0.0
    n = 0
    while True:
        try:
            head = fh.read(8)
            if not head:
                return
            if len(head) < 8:
                stats.damage(f"{path}: capture cut short inside a block header after {n} frames")
                return
            if head[:4] == _PCAPNG_MAGIC:  # a section header: its own byte order, a new interface list
                bom = fh.read(4)
                if bom not in _PCAPNG_BOM:
                    stats.damage(f"{path}: section header with a bad byte-order magic after {n} frames")
                    return
                order = _PCAPNG_BOM[bom]
                size = struct.unpack(order + "I", head[4:8])[0]
                if not 28 <= size <= _MAX_BLOCK or size % 4:
                    stats.damage(f"{path}: section header of {size} bytes after {n} frames")
                    return
                if len(fh.read(size - 12)) < size - 12:
                    stats.damage(f"{path}: capture cut short inside a section header after {n} frames")
                    return
                ifaces = []
                continue
            if order is None:
                stats.damage(f"{path}: pcapng block before any section header")
                return
            btype, size = struct.unpack(order + "II", head)
            if not 12 <= size <= _MAX_BLOCK or size % 4:
                stats.damage(f"{path}: block of {size} bytes after {n} frames; stopping here")
                return
            body = fh.read(size - 8)
        except _DAMAGE as err:
            stats.damage(f"{path}: capture damaged after {n} frames ({type(err).__name__})")
            return
        if len(body) < size - 8:
            stats.damage(f"{path}: capture cut short inside a block after {n} frames")
            return
        body = body[:-4]  # the block's trailing length
        try:
            if btype == _PCAPNG_IDB:
                ifaces.append(_idb(body, order))
                continue
            if btype == _PCAPNG_EPB:
                iface, hi, lo, caplen, wire = struct.unpack_from(order + "IIIII", body)
                data = body[20 : 20 + caplen]
            elif btype == _PCAPNG_PB:  # obsolete Packet Block
                iface, _, hi, lo, caplen, wire = struct.unpack_from(order + "HHIIII", body)
                data = body[20 : 20 + caplen]
            elif btype == _PCAPNG_SPB:  # Simple Packet Block: interface 0, no timestamp
                iface, hi, lo = 0, -1, -1
                wire = struct.unpack_from(order + "I", body)[0]
                data = body[4 : 4 + min(wire, ifaces[0].snaplen or wire)] if ifaces else b""
                caplen = len(data)
            else:
                continue
        except struct.error:
            stats.damage(f"{path}: packet block cut short after {n} frames")
            return
        if iface >= len(ifaces):
            stats.damage(f"{path}: packet on undeclared interface {iface} after {n} frames")
            return
        if len(data) < caplen:
            stats.damage(f"{path}: packet block shorter than its captured length after {n} frames")
            return
        ifc = ifaces[iface]
        ts = last_ts if hi < 0 else ifc.offset + ((hi << 32) | lo) / ifc.divisor
        last_ts = ts
        if caplen < wire:
            stats.short_frames += 1
        n += 1
        yield ifc.linktype, ts, data


def _pcapng_blocks(fh: io.BufferedIOBase, path: str, stats: CaptureStats) -> Iterator[FrameBlock]:
    """pcapng packets gathered into blocks of up to ``_PCAPNG_BLOCK`` frames of one link type each;
    packets of interfaces whose link type dpack cannot read are skipped and counted."""
    pending: dict[int, int] = {}  # unsupported link type -> packets skipped

    def block(lt: int, ts: list[float], frames: list[bytes]) -> FrameBlock:
        end = np.cumsum([len(f) for f in frames], dtype=np.int64)
        start = np.concatenate((np.zeros(1, np.int64), end[:-1]))
        return FrameBlock(lt, b"".join(frames), start, end, np.array(ts, dtype=np.float64))

    lt, handed = -1, 0
    ts: list[float] = []
    frames: list[bytes] = []
    for linktype, t, frame in _pcapng_records(fh, path, stats):
        if linktype not in SUPPORTED_LINKTYPES:
            pending[linktype] = pending.get(linktype, 0) + 1
            continue
        if stats.linktype < 0:
            stats.linktype = linktype
        if frames and (linktype != lt or len(frames) >= _PCAPNG_BLOCK):
            yield block(lt, ts, frames)
            handed += len(frames)
            ts, frames = [], []
        lt = linktype
        ts.append(t)
        frames.append(frame)
    if frames:
        yield block(lt, ts, frames)
        handed += len(frames)
    for other, k in sorted(pending.items()):
        stats.skipped += k
        stats.notes.append(f"{path}: {k} packets of link type {other} skipped (not supported)")
        log.warning("%s", stats.notes[-1])
    if pending and not handed:
        raise CaptureError(
            f"{path}: link type {', '.join(map(str, sorted(pending)))} is not supported "
            "(Ethernet, raw IP, Linux cooked v1/v2 and BSD loopback are)"
        )


def read_blocks(path: str | os.PathLike[str], stats: CaptureStats | None = None) -> Iterator[FrameBlock]:
    """Every record of a pcap/pcapng file (gzip allowed), as ``FrameBlock``s in capture order.
    ``stats.frames`` counts the frames of the blocks handed out so far."""
    stats = stats if stats is not None else CaptureStats()
    name = os.fspath(path)
    fh = _open(path)
    try:
        try:
            head = fh.read(24)
        except (OSError, EOFError, zlib.error) as err:
            raise CaptureError(f"{name}: damaged gzip data ({err})") from None
        if not head:
            raise CaptureError(f"{name}: empty file, not a capture")
        if head[:4] in _PCAP_MAGICS:
            if len(head) < 24:
                raise CaptureError(f"{name}: pcap file header cut short ({len(head)} of 24 bytes)")
            order = _PCAP_MAGICS[head[:4]][0]
            linktype = struct.unpack(order + "I", head[20:24])[0] & 0x0FFFFFFF
        elif head[:4] == _PCAPNG_MAGIC:
            if head[8:12] not in _PCAPNG_BOM:
                raise CaptureError(f"{name}: unreadable pcapng header (byte-order magic {head[8:12].hex()})")
            fh.seek(0)
            linktype = -1  # per interface, as the packets come
        else:
            raise CaptureError(f"{name}: not a pcap or pcapng file (magic {head[:4].hex()})")
        if linktype >= 0:
            stats.linktype = linktype
            if linktype not in SUPPORTED_LINKTYPES:
                raise CaptureError(
                    f"{name}: link type {linktype} is not supported "
                    "(Ethernet, raw IP, Linux cooked v1/v2 and BSD loopback are)"
                )
            blocks = _pcap_blocks(fh, name, head, linktype, stats)
        else:
            blocks = _pcapng_blocks(fh, name, stats)
        for block in blocks:
            stats.frames += len(block)
            yield block
    finally:
        fh.close()


def read_capture(
    path: str | os.PathLike[str], stats: CaptureStats | None = None
) -> Iterator[tuple[float, int, bytes]]:
    """Yield ``(timestamp, linktype, frame)`` for every record of a pcap/pcapng file (gzip allowed)."""
    for block in read_blocks(path, stats):
        buf, lt = block.buf, block.linktype
        for ts, start, end in zip(block.ts.tolist(), block.start.tolist(), block.end.tolist(), strict=True):
            yield ts, lt, buf[start:end]

"""Reading capture files: pcap and pcapng, optionally gzip-compressed.

Classic pcap records are read here with ``struct`` (dpkt's pcap iterator silently returns a short last
record, and we must count that); pcapng goes through ``dpkt.pcapng``. Damage is reported, not fatal: a
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

import dpkt
import numpy as np

from ..errors import CaptureError
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
_DAMAGE = (dpkt.NeedData, dpkt.UnpackError, ValueError, EOFError, OSError, zlib.error, struct.error)


@dataclass
class CaptureStats:
    """What reading a capture saw."""

    frames: int = 0
    truncated: int = 0  # 1 if the file ended inside a record or a record header was impossible
    linktype: int = -1
    short_frames: int = 0  # frames captured shorter than on the wire (snaplen)
    notes: list[str] = field(default_factory=list)

    def damage(self, msg: str) -> None:
        self.truncated = 1
        self.notes.append(msg)
        log.warning("%s", msg)


def _open(path: str | os.PathLike[str]) -> io.BufferedIOBase:
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise CaptureError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CaptureError(f"{path}: is a directory, not a capture file") from None
    except PermissionError:
        raise CaptureError(f"{path}: permission denied") from None
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


def _pcapng_blocks(
    reader: dpkt.pcapng.Reader, path: str, linktype: int, stats: CaptureStats
) -> Iterator[FrameBlock]:
    """pcapng records (through dpkt), gathered into blocks of up to ``_PCAPNG_BLOCK`` frames."""
    records = iter(reader)
    seen = 0  # records handed out before this block
    done = False
    while not done:
        ts: list[float] = []
        frames: list[bytes] = []
        while len(frames) < _PCAPNG_BLOCK:
            try:
                t, frame = next(records)
            except StopIteration:
                done = True
                break
            except _DAMAGE as err:
                n = seen + len(frames)
                stats.damage(f"{path}: capture damaged after {n} frames ({type(err).__name__})")
                done = True
                break
            ts.append(t)
            frames.append(frame)
        if frames:
            end = np.cumsum([len(f) for f in frames], dtype=np.int64)
            start = np.concatenate((np.zeros(1, np.int64), end[:-1]))
            yield FrameBlock(linktype, b"".join(frames), start, end, np.array(ts, dtype=np.float64))
            seen += len(frames)


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
            fh.seek(0)
            try:
                reader = dpkt.pcapng.Reader(fh)
            except _DAMAGE as err:
                raise CaptureError(f"{name}: unreadable pcapng header ({err})") from None
            linktype = reader.datalink()
        else:
            raise CaptureError(f"{name}: not a pcap or pcapng file (magic {head[:4].hex()})")
        stats.linktype = linktype
        if linktype not in SUPPORTED_LINKTYPES:
            raise CaptureError(
                f"{name}: link type {linktype} is not supported "
                "(Ethernet, raw IP, Linux cooked v1/v2 and BSD loopback are)"
            )
        if head[:4] == _PCAPNG_MAGIC:
            blocks = _pcapng_blocks(reader, name, linktype, stats)
        else:
            blocks = _pcap_blocks(fh, name, head, linktype, stats)
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

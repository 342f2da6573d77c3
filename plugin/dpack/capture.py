"""Reading capture files: pcap and pcapng, optionally gzip-compressed.

Classic pcap records are read here with ``struct`` (dpkt's pcap iterator silently returns a short last
record, and we must count that); pcapng goes through ``dpkt.pcapng``. Damage is reported, not fatal: a
file that cannot be opened raises ``CaptureError`` with one line; a file that is cut short, or whose
record header is hostile, yields what it holds before the damage and counts it in ``CaptureStats``.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import dpkt

from .errors import CaptureError
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


def _open(path: str | os.PathLike[str]) -> BinaryIO:
    try:
        fh: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by read_capture
    except FileNotFoundError:
        raise CaptureError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CaptureError(f"{path}: is a directory, not a capture file") from None
    except PermissionError:
        raise CaptureError(f"{path}: permission denied") from None
    if fh.read(2) == _GZIP_MAGIC:
        fh.seek(0)
        return gzip.GzipFile(fileobj=fh)  # type: ignore[return-value]
    fh.seek(0)
    return fh


_BLOCK = 1 << 20


def _pcap_records(fh: BinaryIO, path: str, head: bytes, stats: CaptureStats) -> Iterator[tuple[float, bytes]]:
    """Records of a classic pcap body, read in blocks of up to 1 MiB (a read call per record costs more
    than the rest of reading). ``read1``: a damaged gzip stream then raises only after every byte before
    the damage was handed out."""
    order, divisor = _PCAP_MAGICS[head[:4]]
    unpack = struct.Struct(order + "IIII").unpack_from
    buf = b""
    pos = 0
    eof = False
    while True:
        if len(buf) - pos < 16 and not eof:
            more = fh.read1(_BLOCK)
            eof = not more
            buf, pos = buf[pos:] + more, 0
            continue
        if pos == len(buf):
            return
        if len(buf) - pos < 16:
            stats.damage(f"{path}: capture cut short inside a record header after {stats.frames} frames")
            return
        sec, frac, caplen, wirelen = unpack(buf, pos)
        if caplen > MAX_RECORD:
            stats.damage(f"{path}: record {stats.frames + 1} claims {caplen} bytes; stopping here")
            return
        end = pos + 16 + caplen
        while end > len(buf) and not eof:
            more = fh.read1(max(_BLOCK, end - len(buf)))
            eof = not more
            buf, end, pos = buf[pos:] + more, end - pos, 0
        if end > len(buf):
            stats.damage(f"{path}: capture cut short inside record {stats.frames + 1}")
            return
        if caplen < wirelen:
            stats.short_frames += 1
        yield sec + frac / divisor, buf[pos + 16 : end]
        pos = end


def read_capture(
    path: str | os.PathLike[str], stats: CaptureStats | None = None
) -> Iterator[tuple[float, int, bytes]]:
    """Yield ``(timestamp, linktype, frame)`` for every record of a pcap/pcapng file (gzip allowed)."""
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
            records = _pcap_records(fh, name, head, stats)
        elif head[:4] == _PCAPNG_MAGIC:
            fh.seek(0)
            try:
                reader = dpkt.pcapng.Reader(fh)
            except _DAMAGE as err:
                raise CaptureError(f"{name}: unreadable pcapng header ({err})") from None
            linktype = reader.datalink()
            records = iter(reader)
        else:
            raise CaptureError(f"{name}: not a pcap or pcapng file (magic {head[:4].hex()})")
        stats.linktype = linktype
        if linktype not in SUPPORTED_LINKTYPES:
            raise CaptureError(
                f"{name}: link type {linktype} is not supported "
                "(Ethernet, raw IP, Linux cooked v1/v2 and BSD loopback are)"
            )
        while True:
            try:
                ts, frame = next(records)
            except StopIteration:
                break
            except _DAMAGE as err:
                stats.damage(f"{name}: capture damaged after {stats.frames} frames ({type(err).__name__})")
                break
            stats.frames += 1
            yield ts, linktype, frame
    finally:
        fh.close()

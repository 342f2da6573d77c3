"""Classic pcap records with their wire length, for the tools that cut captures (``make_sample.py``,
``make_traces.py``).

A record's header holds the captured length and the length the packet had on the wire. dpack's reader
only needs the captured bytes, but a cut capture must keep both: Zeek drops a packet shorter than its
own IP length unless the record says it was longer on the wire (``truncated_IP_len``), and
``tcprewrite --fixlen=pad`` needs the wire length to restore it before a replay.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple


class Record(NamedTuple):
    ts: float
    data: bytes
    wire_len: int


def read(path: str | Path) -> tuple[int, int, Iterator[Record]]:
    """(link type, snaplen, records) of a classic pcap (gzip allowed; microsecond or nanosecond)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    magic = raw[:4]
    order, div = {
        b"\xd4\xc3\xb2\xa1": ("<", 1e6),
        b"\xa1\xb2\xc3\xd4": (">", 1e6),
        b"\x4d\x3c\xb2\xa1": ("<", 1e9),
        b"\xa1\xb2\x3c\x4d": (">", 1e9),
    }[magic]
    snaplen, linktype = struct.unpack_from(order + "II", raw, 16)
    rec = struct.Struct(order + "IIII")

    def records() -> Iterator[Record]:
        off = 24
        while off + 16 <= len(raw):
            sec, frac, caplen, wire = rec.unpack_from(raw, off)
            yield Record(sec + frac / div, raw[off + 16 : off + 16 + caplen], wire)
            off += 16 + caplen

    return linktype, snaplen, records()


def write(path: str | Path, records: Iterable[Record], linktype: int = 1, snaplen: int = 256) -> int:
    """Write a microsecond pcap (gzip when ``path`` ends in .gz, with a fixed mtime: the same records give
    the same bytes); returns the number of records."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)]
    n = 0
    for r in records:
        usec = round(r.ts * 1e6)
        out.append(
            struct.pack(
                "<IIII", usec // 1_000_000, usec % 1_000_000, len(r.data), max(r.wire_len, len(r.data))
            )
        )
        out.append(r.data)
        n += 1
    blob = b"".join(out)
    p = Path(path)
    if p.suffix == ".gz":
        with gzip.GzipFile(p, "wb", mtime=0) as gz:
            gz.write(blob)
    else:
        p.write_bytes(blob)
    return n

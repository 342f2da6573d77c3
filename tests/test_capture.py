"""Capture reading: formats, compression, link types, and damaged or hostile files."""

from __future__ import annotations

import gzip
import struct

import pytest
from pcaps import eth, handshake, sll, write_pcap, write_pcapng, write_pcapng_interfaces

from dpack.errors import CaptureError
from dpack.traffic.capture import CaptureStats, read_capture


def frames_of(path):
    st = CaptureStats()
    return [(lt, fr) for _, lt, fr in read_capture(path, st)], st


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_variants(tmp_path, gz, nano):
    pkts = [eth(p) for p in handshake()]
    p = write_pcap(tmp_path / "a.pcap", pkts, gz=gz, nano=nano)
    got, st = frames_of(p)
    assert [fr for _, fr in got] == pkts
    assert st.frames == 5 and not st.truncated and st.linktype == 1


def test_pcap_timestamps_nanosecond(tmp_path):
    p = write_pcap(tmp_path / "a.pcap", [(1_700_000_000.123456789, eth(handshake()[0]))], nano=True)
    ((ts, _, _),) = list(read_capture(p))
    assert ts == pytest.approx(1_700_000_000.123456789, abs=1e-6)


def test_pcapng_and_gzip_pcapng(tmp_path):
    pkts = [eth(p) for p in handshake()]
    p = write_pcapng(tmp_path / "a.pcapng", pkts)
    got, st = frames_of(p)
    assert [fr for _, fr in got] == pkts
    gzp = tmp_path / "a.pcapng.gz"
    gzp.write_bytes(gzip.compress(p.read_bytes()))
    assert [fr for _, fr in frames_of(gzp)[0]] == pkts


def test_pcapng_interfaces_each_with_their_own_link_type_and_clock(tmp_path):
    """Two interfaces (Ethernet in microseconds, raw IP in nanoseconds) and one dpack cannot read: each
    packet is read with its own interface's link type and time; the unreadable ones are counted."""
    hs = handshake()
    t0 = 1_700_000_000.0
    packets = [
        (0, t0, eth(hs[0])),
        (1, t0 + 0.000000123, hs[1]),
        (2, t0, b"radiotap"),
        (0, t0 + 1, eth(hs[2])),
    ]
    p = write_pcapng_interfaces(tmp_path / "multi.pcapng", [(1, 6), (101, 9), (127, 6)], packets)
    st = CaptureStats()
    got = list(read_capture(p, st))
    assert [(lt, fr) for _, lt, fr in got] == [(1, eth(hs[0])), (101, hs[1]), (1, eth(hs[2]))]
    assert got[1][0] == pytest.approx(t0 + 0.000000123, abs=1e-7)
    assert st.skipped == 1 and "link type 127" in st.notes[0]


def test_pcapng_of_only_unreadable_interfaces_is_refused_with_one_line(tmp_path):
    p = write_pcapng_interfaces(tmp_path / "wifi.pcapng", [(127, 6)], [(0, 1.0, b"x" * 40)])
    with pytest.raises(CaptureError, match="link type 127 is not supported"):
        list(read_capture(p))


def test_linux_cooked(tmp_path):
    pkts = [sll(p) for p in handshake()]
    got, st = frames_of(write_pcap(tmp_path / "a.pcap", pkts, linktype=113))
    assert st.linktype == 113 and len(got) == 5


def test_truncated_inside_record_keeps_earlier_frames(tmp_path):
    pkts = [eth(p) for p in handshake()]
    raw = write_pcap(tmp_path / "a.pcap", pkts).read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(raw[:-10])
    got, st = frames_of(cut)
    assert len(got) == 4
    assert st.truncated == 1 and "cut short" in st.notes[0]


def test_truncated_gzip_stream(tmp_path):
    pkts = [eth(p) for p in handshake()] * 50
    raw = write_pcap(tmp_path / "a.pcap.gz", pkts, gz=True).read_bytes()
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    got, st = frames_of(cut)
    assert 0 < len(got) < len(pkts)
    assert st.truncated == 1


def test_hostile_record_length_stops_reading(tmp_path):
    pkts = [eth(p) for p in handshake()]
    raw = bytearray(write_pcap(tmp_path / "a.pcap", pkts).read_bytes())
    # second record header starts after the file header (24) + first record (16 + len)
    off = 24 + 16 + len(pkts[0])
    struct.pack_into("<I", raw, off + 8, 0x7FFFFFFF)
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(bytes(raw))
    got, st = frames_of(bad)
    assert len(got) == 1 and st.truncated == 1 and "claims" in st.notes[0]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"GIF89a" + b"\0" * 40, "not a pcap or pcapng file"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "header cut short"),
        (gzip.compress(b"hello world, not a capture at all"), "not a pcap or pcapng file"),
    ],
)
def test_unreadable_files_raise_one_line(tmp_path, content, message):
    p = tmp_path / "x.pcap"
    p.write_bytes(content)
    with pytest.raises(CaptureError, match=message) as ei:
        list(read_capture(p))
    assert "\n" not in str(ei.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CaptureError, match="no such file"):
        list(read_capture(tmp_path / "nope.pcap"))
    with pytest.raises(CaptureError, match="is a directory"):
        list(read_capture(tmp_path))


def test_unsupported_linktype(tmp_path):
    p = write_pcap(tmp_path / "a.pcap", [b"\0" * 40], linktype=147)
    with pytest.raises(CaptureError, match="link type 147 is not supported"):
        list(read_capture(p))


def test_snaplen_shorter_than_wire_is_counted(tmp_path):
    full = eth(handshake()[3])
    raw = bytearray(write_pcap(tmp_path / "a.pcap", [full[:40]]).read_bytes())
    struct.pack_into("<I", raw, 24 + 12, len(full))  # wire length > captured length
    p = tmp_path / "snap.pcap"
    p.write_bytes(bytes(raw))
    got, st = frames_of(p)
    assert len(got) == 1 and st.short_frames == 1

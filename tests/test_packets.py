"""The pure packet -> model input path: link layers, header parsing, masking, prefix policies, field names."""

from __future__ import annotations

import struct

import dpkt
import numpy as np
import pytest
from pcaps import CLIENT, CLIENT6, SERVER, SERVER6, a4, eth, handshake, ip4, ip6, sll, tcp, udp

from dpack.traffic.encode import Frame, PrefixSpec, encode_flow, mask_packet
from dpack.traffic.fields import field_names
from dpack.traffic.packets import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    ip_offset,
    parse_ip,
)

SYN, SYNACK, ACK, DATA, SACK = handshake()


@pytest.mark.parametrize(
    "frame, linktype, offset",
    [
        (eth(SYN), LINKTYPE_ETHERNET, 14),
        (eth(SYN, vlans=[10]), LINKTYPE_ETHERNET, 18),
        (eth(SYN, vlans=[10, 20]), LINKTYPE_ETHERNET, 22),  # QinQ
        (sll(SYN), LINKTYPE_LINUX_SLL, 16),
        (struct.pack("!HHIBBH8s", 0x0800, 0, 2, 1, 0, 6, b"\0" * 8) + SYN, LINKTYPE_LINUX_SLL2, 20),
        (SYN, LINKTYPE_RAW, 0),
        (struct.pack("<I", 2) + SYN, LINKTYPE_NULL, 4),
        (eth(b"\x00\x01" * 20)[:12] + b"\x08\x06" + b"\0" * 28, LINKTYPE_ETHERNET, -1),  # ARP
        (b"\x02\x00", LINKTYPE_ETHERNET, -1),  # runt
    ],
)
def test_ip_offset(frame, linktype, offset):
    assert ip_offset(frame, linktype) == offset


def test_parse_tcp_v4():
    p = parse_ip(DATA)
    assert (p.version, p.proto, p.sport, p.dport) == (4, 6, 40000, 22)
    assert p.tcp_flags & dpkt.tcp.TH_PUSH and p.payload_len == len(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert not p.fragment


def test_parse_ipv6_extension_headers():
    # hop-by-hop (8 bytes, next = destination options), destination options (8 bytes, next = TCP)
    hbh = bytes([60, 0]) + b"\x01\x04\0\0\0\0"
    dst = bytes([6, 0]) + b"\x01\x04\0\0\0\0"
    pkt = ip6(CLIENT6, SERVER6, tcp(40000, 443, dpkt.tcp.TH_SYN), nxt=0, ext=hbh + dst)
    p = parse_ip(pkt)
    assert (p.version, p.proto, p.sport, p.dport, p.tcp_flags) == (6, 6, 40000, 443, dpkt.tcp.TH_SYN)


def test_ipv6_extension_header_loop_is_bounded():
    # nine hop-by-hop headers chained to each other: more than any sane packet has
    chain = b"".join(bytes([0, 0]) + b"\x01\x04\0\0\0\0" for _ in range(9))
    pkt = ip6(CLIENT6, SERVER6, udp(1, 2), nxt=0, ext=chain)
    assert parse_ip(pkt) is None


def test_fragments():
    first = bytearray(ip4(CLIENT, SERVER, udp(5000, 53, b"x" * 40)))
    struct.pack_into("!H", first, 6, 0x2000)  # MF, offset 0
    later = bytearray(first)
    struct.pack_into("!H", later, 6, 0x0003)  # offset 24 bytes, no transport header
    assert not parse_ip(bytes(first)).fragment and parse_ip(bytes(first)).dport == 53
    p = parse_ip(bytes(later))
    assert p.fragment and (p.sport, p.dport) == (0, 0)
    frag6 = bytes([17, 0]) + struct.pack("!HI", 0x0008, 0xDEADBEEF)  # offset 1 (8 bytes)
    q = parse_ip(ip6(CLIENT6, SERVER6, udp(1, 2, b"abc"), nxt=44, ext=frag6))
    assert q.fragment


@pytest.mark.parametrize("buf", [b"", b"\x45" + b"\0" * 10, b"\x46" + b"\0" * 19, b"\x60" + b"\0" * 20])
def test_parse_rejects_short_or_bad(buf):
    assert parse_ip(buf) is None


def test_masking_zeroes_identity_and_random_fields():
    m = mask_packet(SYN, is_orig=True)
    assert m[4:6] == b"\0\0"  # ip.id
    assert m[10:20] == b"\0" * 10  # checksum + addresses
    assert m[20:22] == b"\0\0"  # initiator's port
    assert m[22:24] == struct.pack("!H", 22)  # service port kept
    assert m[24:32] == b"\0" * 8  # seq, ack
    assert m[36:38] == b"\0\0"  # tcp checksum
    assert m[8] == 64  # ttl kept
    assert a4(CLIENT) not in bytes(m) and a4(SERVER) not in bytes(m)
    # timestamp option value zeroed, MSS kept
    assert bytes(m[40:44]) == b"\x02\x04\x05\xb4"
    assert bytes(m[48:56]) == b"\0" * 8
    r = mask_packet(SYNACK, is_orig=False)
    assert r[20:22] == struct.pack("!H", 22) and r[22:24] == b"\0\0"


def test_masking_dynamic_service_port_and_icmp_quote():
    m = mask_packet(ip4(CLIENT, SERVER, tcp(40000, 40100, dpkt.tcp.TH_SYN)), is_orig=True)
    assert m[22:24] == b"\0\0"  # passive-FTP style port >= 32768 is random too
    quoted = ip4(SERVER, CLIENT, udp(53, 5353, b"q"))
    unreach = dpkt.icmp.ICMP(type=3, code=3, data=dpkt.icmp.ICMP.Unreach(data=quoted))
    m = mask_packet(ip4(SERVER, CLIENT, unreach), is_orig=True)
    assert a4(CLIENT) not in bytes(m) and a4(SERVER) not in bytes(m)


def test_masking_ipv6():
    m = mask_packet(ip6(CLIENT6, SERVER6, udp(5000, 53, b"x"), nxt=17), is_orig=True)
    assert bytes(m[8:40]) == b"\0" * 32
    assert m[1] & 0x0F == 0 and m[2:4] == b"\0\0"  # flow label


def test_encode_flow_shape_padding_direction():
    spec = PrefixSpec(4, 80, "first")
    enc = encode_flow([Frame(1, eth(p), o) for p, o in [(SYN, True), (SYNACK, False)]], spec)
    assert enc.data.shape == (4, 80) and enc.data.dtype == np.uint8
    assert enc.direction.tolist() == [1, -1, 0, 0]
    assert enc.data[2:].sum() == 0
    assert enc.data[0, len(SYN) :].sum() == 0  # a 60-byte SYN is zero-padded to 80


def test_encode_flow_is_pure_and_linklayer_independent():
    spec = PrefixSpec(3, 80, "payload")
    frames_eth = [Frame(1, eth(p), o) for p, o in [(SYN, True), (SYNACK, False), (ACK, True), (DATA, True)]]
    frames_raw = [
        Frame(LINKTYPE_RAW, p, o) for p, o in [(SYN, True), (SYNACK, False), (ACK, True), (DATA, True)]
    ]
    frames_vlan = [Frame(1, eth(f.data, vlans=[7]), f.is_orig) for f in frames_raw]
    a = encode_flow(frames_eth, spec)
    for other in (
        encode_flow(frames_raw, spec),
        encode_flow(frames_vlan, spec),
        encode_flow(frames_eth, spec),
    ):
        assert np.array_equal(a.data, other.data) and np.array_equal(a.direction, other.direction)


def test_policies_first_vs_payload():
    frames = [
        Frame(LINKTYPE_RAW, p, o)
        for p, o in [(SYN, True), (SYNACK, False), (ACK, True), (DATA, True), (SACK, False)]
    ]
    first = encode_flow(frames, PrefixSpec(2, 80, "first"))
    payload = encode_flow(frames, PrefixSpec(2, 80, "payload"))
    assert first.data[1, 33] == dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK  # SYN-ACK in slot 2
    assert payload.data[1, 33] == dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH  # first data packet in slot 2
    assert bytes(payload.data[1, 40:59]) == b"SSH-2.0-OpenSSH_9.2"


def test_snaplen_shorter_than_l_is_padded():
    cut = DATA[:30]
    enc = encode_flow(
        [Frame(LINKTYPE_RAW, SYN, True), Frame(LINKTYPE_RAW, cut, True)], PrefixSpec(2, 80, "first")
    )
    # a frame cut inside the TCP header cannot be parsed: skipped, not a crash
    assert enc.direction.tolist() == [1, 0]
    cut2 = DATA[:50]
    enc = encode_flow(
        [Frame(LINKTYPE_RAW, SYN, True), Frame(LINKTYPE_RAW, cut2, True)], PrefixSpec(2, 80, "first")
    )
    assert enc.direction.tolist() == [1, 1] and enc.data[1, 50:].sum() == 0


def test_non_ip_and_garbage_frames_are_skipped():
    frames = [Frame(1, b"\xff" * 60, True), Frame(1, b"", True), Frame(1, eth(SYN), True)]
    enc = encode_flow(frames, PrefixSpec(2, 80, "first"))
    assert enc.direction.tolist() == [1, 0]


def test_field_names():
    names = field_names(mask_packet(DATA, True))
    assert names[8] == "ip.ttl" and names[33] == "tcp.flags" and names[34] == "tcp.win"
    assert names[32] == "tcp.off" and names[40] == "payload[0]"
    u = field_names(ip4(CLIENT, SERVER, udp(1, 53, b"abcd")))
    assert u[22] == "udp.dport" and u[28] == "payload[0]"
    assert field_names(np.zeros(10, np.uint8)) == ["pad"] * 10


def test_prefix_spec_validation():
    with pytest.raises(ValueError, match="packets per flow"):
        PrefixSpec(0, 80)
    with pytest.raises(ValueError, match="prefix policy"):
        PrefixSpec(2, 80, "middle")
    with pytest.raises(ValueError, match="masking"):
        PrefixSpec(2, 80, "first", "v0")

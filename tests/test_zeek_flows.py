"""dpack's flows are Zeek's connections: on the real Zeek (``zeek -r`` with its default scripts and
``@load dpack``), every sample Zeek exports equals the sample dpack's flow table makes from the same
capture - same flow, same frames, same directions, ready at the same time - so that offline verdicts
are the live ones by construction.

The capture is written here with every case where the two have disagreed: ICMP echoes with several
identifiers and with the originator's address above the responder's, ICMP errors, DNS queries on one
socket 15 s apart (Zeek's DNS analyzer ends the connection), a TCP connection silent for two minutes, a
prefix that is not complete within DPack::max_wait, fragments, a tunnel, an IGMP packet, a port reused
after FIN, VLAN tags, IPv6.
"""

from __future__ import annotations

import struct

import dpkt
import zeeklab
from conftest import SAMPLE
from pcaps import CLIENT, CLIENT6, SERVER, SERVER6, eth, handshake, ip4, ip4_raw, ip6, tcp, udp, write_pcap

from dpack.traffic.encode import PrefixSpec

SPEC = PrefixSpec(3, 80, "payload")
A, P, S, F = dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_SYN, dpkt.tcp.TH_FIN


def _echo(t: int, ident: int) -> dpkt.icmp.ICMP:
    return dpkt.icmp.ICMP(type=t, code=0, data=dpkt.icmp.ICMP.Echo(id=ident, seq=1, data=b"ping" * 8))


def edge_cases() -> list[tuple[float, bytes]]:
    t = 1_700_000_000.0
    out: list[tuple[float, bytes]] = []

    def at(dt: float, frame: bytes) -> None:
        out.append((t + dt, frame))

    hi, lo = "10.0.0.9", "10.0.0.1"  # an originator whose address sorts after the responder's
    for ident, base in ((77, 0.0), (78, 2.0)):  # two ping runs: one Zeek connection
        at(base, eth(ip4(hi, lo, _echo(8, ident))))
        at(base + 0.001, eth(ip4(lo, hi, _echo(0, ident))))
    unreach = dpkt.icmp.ICMP(
        type=3, code=3, data=dpkt.icmp.ICMP.Unreach(data=bytes(ip4(CLIENT, SERVER, udp(5, 6))))
    )
    at(0.5, eth(ip4(SERVER, CLIENT, unreach)))
    at(0.6, eth(ip4(SERVER, CLIENT, unreach)))
    # DNS on one socket: a query and its answer, another 15 s later (a new Zeek connection)
    for base in (1.0, 16.0):
        at(base, eth(ip4(CLIENT, SERVER, udp(5353, 53, b"q" * 30))))
        at(base + 0.002, eth(ip4(SERVER, CLIENT, udp(53, 5353, b"r" * 40))))
    # plain UDP on one socket 15 s apart: one connection (60 s timeout)
    at(1.5, eth(ip4(CLIENT, SERVER, udp(40001, 9999, b"x" * 10))))
    at(16.5, eth(ip4(CLIENT, SERVER, udp(40001, 9999, b"y" * 10))))
    # a TCP connection quiet for two minutes, then data (still the same connection for Zeek)
    hs = handshake(sport=40100, dport=22)
    for i, p in enumerate(hs[:3]):
        at(3.0 + i * 0.001, eth(p))
    at(130.0, eth(ip4(CLIENT, SERVER, tcp(40100, 22, A | P, b"late", seq=112, ack=1000))))
    # a prefix not complete within max_wait (slow headers): SYN, SYN-ACK, ACK, data, data 8 s later
    hs = handshake(sport=40200, dport=80, request=b"GET / HTTP/1.1\r\n")
    for i, p in enumerate(hs[:4]):
        at(4.0 + i * 0.001, eth(p))
    at(12.0, eth(ip4(CLIENT, SERVER, tcp(40200, 80, A | P, b"X-a: b\r\n", seq=128, ack=1000))))
    # a fragmented datagram (Zeek reassembles it), a GRE packet, an IGMP report
    raw = bytes(udp(6000, 7000, b"F" * 60))
    at(5.0, eth(ip4_raw(CLIENT, SERVER, 17, raw[:32], 0, True)))
    at(5.001, eth(ip4_raw(CLIENT, SERVER, 17, raw[32:], 4, False)))
    gre = struct.pack("!HH", 0, 0x0800) + ip4("172.16.0.1", "172.16.0.2", udp(1111, 2222, b"inner"))
    at(5.5, eth(ip4_raw(CLIENT, "192.0.2.200", 47, gre)))
    at(5.7, eth(ip4(CLIENT, "224.0.0.22", dpkt.igmp.IGMP(type=0x22), proto=2)))
    # a port reused after FIN: two connections
    for base in (6.0, 7.0):
        hs = handshake(sport=40300, dport=8080, request=b"hello")
        for i, p in enumerate(hs):
            at(base + i * 0.001, eth(p))
        at(base + 0.01, eth(ip4(CLIENT, SERVER, tcp(40300, 8080, F | A, seq=200, ack=1000))))
        at(base + 0.011, eth(ip4(SERVER, CLIENT, tcp(8080, 40300, F | A, seq=1000, ack=201))))
    # a connection whose data comes after 20 bare ACKs: only its first 16 packets are looked at
    hs = handshake(sport=40500, dport=2000)
    for i, p in enumerate(hs[:3]):
        at(10.0 + i * 0.001, eth(p))
    for i in range(20):
        at(10.01 + i * 0.001, eth(ip4(SERVER, CLIENT, tcp(2000, 40500, A, seq=1000, ack=112))))
    at(10.05, eth(ip4(CLIENT, SERVER, tcp(40500, 2000, A | P, b"data", seq=112, ack=1000))))
    # VLAN-tagged and IPv6 connections
    for i, p in enumerate(handshake(sport=40400, dport=443, request=b"\x16\x03\x01" + b"t" * 40)):
        at(8.0 + i * 0.001, eth(p, vlans=[100]))
    for i, p in enumerate(
        [ip6(CLIENT6, SERVER6, udp(5000, 53, b"q6"), 17), ip6(SERVER6, CLIENT6, udp(53, 5000, b"r6"), 17)]
    ):
        at(9.0 + i * 0.001, eth(p))
    out.sort(key=lambda x: x[0])
    return out


def test_offline_flows_are_the_connections_zeek_exports(zeek, tmp_path):
    cap = write_pcap(tmp_path / "edge.pcap", edge_cases())
    zs, differ, _ = zeeklab.compare_flows(cap, tmp_path, SPEC)
    assert differ == []
    by = {(z["proto"], z["orig_h"], z["orig_p"]["port"]): z for z in zs}
    assert len([z for z in zs if z["orig_h"] == "10.0.0.9"]) == 1  # both ping runs, one connection
    assert len(by[(6, CLIENT, 40200)]["pkts"]) == 2  # max_wait: the late header line is not in it
    assert sum(1 for z in zs if z["orig_p"]["port"] == 5353) == 2  # DNS: a new connection 15 s later
    assert (2, CLIENT, 0) in by and not any(z["proto"] == 47 for z in zs)  # IGMP yes, GRE no
    assert not any(z["orig_p"]["port"] == 6000 for z in zs)  # the reassembled datagram takes no slot
    assert len(by[(6, CLIENT, 40500)]["pkts"]) == 1  # its data was packet 24: beyond the first 16


def test_offline_flows_are_zeek_connections_on_the_lab_sample(zeek, tmp_path):
    zs, differ, _ = zeeklab.compare_flows(SAMPLE, tmp_path, SPEC)
    assert len(zs) > 1000
    assert differ == []


BATCH_SIZES_SCRIPT = """\
@load dpack
hook DPack::publish_policy(hdr: DPack::BatchHeader, batch: vector of DPack::Sample)
	{
	print fmt("batch %d", |batch|);
	for ( i in batch )
		print to_json(batch[i]);
	break;
	}
"""


def test_zeek_splits_a_batch_of_large_ipv6_samples_under_the_frame_cap(zeek, tmp_path):
    """The largest samples a node can export (IPv6, full-size frames, capture_bytes at the contract's
    limit) with batch_size at the contract's maximum: Zeek publishes each batch before its JSON passes
    DPack::max_batch_text, so no frame reaches the scorer's cap (which would drop the whole batch)."""
    import json
    import subprocess

    from zeekpeer import samples_frame

    from dpack.zeek import contract as C
    from dpack.zeek.wire import MAX_FRAME_TEXT, Port

    big = b"\xff" * 1400
    frames = []
    t = 1_700_000_000.0
    for i in range(2000):  # one-packet-each-way UDP exchanges from 2000 source ports
        a = f"2001:db8:ffff:ffff:ffff:ffff:ffff:{i:04x}"
        frames.append((t + i * 0.001, eth(ip6(a, SERVER6, udp(10000 + i, 53, big), 17), src=b"\x02" * 6)))
        frames.append((t + i * 0.001 + 0.0002, eth(ip6(SERVER6, a, udp(53, 10000 + i, big), 17))))
    cap = write_pcap(tmp_path / "big6.pcap", frames)
    (tmp_path / "sizes.zeek").write_text(BATCH_SIZES_SCRIPT)
    site = zeeklab.site_dir(tmp_path)
    r = subprocess.run(
        ["zeek", "-C", "-r", str(cap), str(tmp_path / "sizes.zeek"), "DPack::batch_size=4096",
         f"DPack::capture_bytes={C.MAX_FRAME_BYTES}", "DPack::max_wait=0.0001sec", "DPack::batch_interval=1hr"],
        cwd=tmp_path, env=zeeklab.zeek_env(site), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    batches: list[list[dict]] = []
    for line in r.stdout.splitlines():
        if line.startswith("batch "):
            batches.append([])
        elif line.startswith("{"):
            batches[-1].append(json.loads(line))
    assert sum(len(b) for b in batches) == 2000
    assert len(batches) >= 2  # 2000 samples of ~2.7 KB of JSON: more than one frame's worth

    def rec(z: dict) -> dict:
        return {
            **z,
            "orig_p": Port(z["orig_p"]["port"], z["orig_p"]["proto"]),
            "resp_p": Port(z["resp_p"]["port"], z["resp_p"]["proto"]),
        }

    sizes = [len(samples_frame([rec(z) for z in b], t)) for b in batches]
    assert max(sizes) <= MAX_FRAME_TEXT, sizes
    assert max(sizes) > MAX_FRAME_TEXT // 2, sizes  # split near the cap, not into tiny batches

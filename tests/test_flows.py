"""The flow table: bidirectional keys, early hand-out, idle timeout, lone packets, ICMP, Community ID."""

from __future__ import annotations

import socket

import communityid
import dpkt
import pytest
from pcaps import CLIENT, CLIENT6, SERVER, SERVER6, a4, a6, eth, handshake, ip4, ip4_raw, ip6, tcp, udp

from dpack.traffic.encode import PrefixSpec
from dpack.traffic.flows import FlowRules, FlowTable, flows_from_frames
from dpack.traffic.keys import community_id

FIRST2 = PrefixSpec(2, 80, "first")


def feed(pkts, spec=FIRST2, t0=100.0, dt=0.01, rules=None):
    return list(flows_from_frames(((t0 + i * dt, 1, eth(p)) for i, p in enumerate(pkts)), spec, rules))


def test_bidirectional_flow_with_directions():
    (s,) = feed(handshake())
    assert (s.proto_name, s.src, s.sport, s.dst, s.dport) == ("tcp", CLIENT, 40000, SERVER, 22)
    assert [f.is_orig for f in s.frames] == [True, False]
    assert s.ts == pytest.approx(100.0)


def test_sample_handed_out_as_soon_as_prefix_is_complete():
    table = FlowTable(PrefixSpec(2, 80, "first"))
    pk = handshake()
    assert table.add(1.0, 1, eth(pk[0])) == []
    ready = table.add(1.001, 1, eth(pk[1]))
    assert len(ready) == 1 and len(ready[0].frames) == 2
    # later packets of the same flow do not open a new flow
    assert table.add(1.002, 1, eth(pk[2])) == [] and table.stats.flows == 1
    assert table.flush() == []


def test_lone_syn_is_a_flow_scored_at_the_end():
    scan = [ip4(CLIENT, SERVER, tcp(50000 + i, 1 + i, dpkt.tcp.TH_SYN)) for i in range(5)]
    out = feed(scan, PrefixSpec(3, 80, "payload"))
    assert len(out) == 5 and all(len(s.frames) == 1 for s in out)


def test_idle_timeout_splits_flows():
    q = ip4(CLIENT, SERVER, udp(5000, 53, b"q"))
    out = list(flows_from_frames([(0.0, 1, eth(q)), (200.0, 1, eth(q))], PrefixSpec(2, 80)))
    assert len(out) == 2 and [s.ts for s in out] == [0.0, 200.0]
    # Zeek's timeouts by protocol: TCP stays open for 5 minutes of silence, UDP for one
    syn = ip4(CLIENT, SERVER, tcp(40000, 80, dpkt.tcp.TH_SYN))
    ack = ip4(CLIENT, SERVER, tcp(40000, 80, dpkt.tcp.TH_ACK))
    dns = [ip4(CLIENT, SERVER, udp(5000, 5000, b"q"))] * 2
    out = list(
        flows_from_frames(
            [(0.0, 1, eth(syn)), (200.0, 1, eth(ack)), (400.0, 1, eth(dns[0])), (459.0, 1, eth(dns[1]))],
            PrefixSpec(3, 80, "first"),
        )
    )
    assert [(s.proto_name, len(s.frames)) for s in out] == [("tcp", 1), ("udp", 1)]
    rules = FlowRules(tcp_timeout=100.0)
    out = list(
        flows_from_frames([(0.0, 1, eth(syn)), (200.0, 1, eth(ack))], PrefixSpec(3, 80, "first"), rules)
    )
    assert len(out) == 2


def test_new_syn_after_fin_is_a_new_flow():
    fin = ip4(CLIENT, SERVER, tcp(40000, 22, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK))
    pk = handshake()
    out = feed([pk[0], fin, pk[0]], PrefixSpec(3, 80, "first"))
    assert len(out) == 2


def test_icmp_flows_are_keyed_as_zeek_keys_icmp_connections():
    """Echo request and reply are one flow whatever the identifier (Zeek's key: the address pair with the
    type and its counterpart); messages without a counterpart are one-way flows keyed by type and code."""
    req = dpkt.icmp.ICMP(type=8, code=0, data=dpkt.icmp.ICMP.Echo(id=77, seq=1, data=b"ping"))
    rep = dpkt.icmp.ICMP(type=0, code=0, data=dpkt.icmp.ICMP.Echo(id=77, seq=1, data=b"ping"))
    other = dpkt.icmp.ICMP(type=8, code=0, data=dpkt.icmp.ICMP.Echo(id=78, seq=1, data=b"ping"))
    unreach = dpkt.icmp.ICMP(type=3, code=3, data=dpkt.icmp.ICMP.Unreach(data=b"\0" * 28))
    out = feed(
        [
            ip4(CLIENT, SERVER, req),
            ip4(SERVER, CLIENT, rep),
            ip4(CLIENT, SERVER, other),
            ip4(SERVER, CLIENT, unreach),
            ip4(CLIENT, SERVER, unreach),
        ],
        PrefixSpec(3, 80, "first"),
    )
    assert sorted((s.src, s.sport, s.dport, len(s.frames)) for s in out) == [
        (CLIENT, 3, 3, 1),
        (CLIENT, 8, 0, 3),
        (SERVER, 3, 3, 1),
    ]


def test_prefix_waits_max_wait_seconds_at_most():
    """A flow whose prefix is not complete ``max_wait`` seconds after its first packet is handed out with
    what it has, at that time (Zeek's DPack::max_wait); its later packets do not make a new flow."""
    spec = PrefixSpec(3, 80, "payload", max_wait=5.0)
    pk = handshake()
    frames = [
        (0.0, pk[0]),
        (0.001, pk[1]),
        (0.002, pk[3]),
        (5.0, ip4(SERVER, CLIENT, tcp(22, 40000, 0x18, b"x"))),
    ]
    table = FlowTable(spec)
    out = [s for t, p in frames for s in table.add(t, 1, eth(p))] + table.flush()
    assert [(len(s.frames), s.ready) for s in out] == [(2, 5.0)]
    # without another packet, the expiry pass hands it out at the deadline
    table = FlowTable(spec)
    out = [s for t, p in frames[:3] for s in table.add(t, 1, eth(p))]
    other = ip4("192.0.2.99", SERVER, udp(1, 2, b"z"))
    out += table.add(7.0, 1, eth(other))
    assert [(s.src, len(s.frames), s.ready) for s in out] == [(CLIENT, 2, 5.0)]


def test_dns_over_udp_ends_as_zeek_dns_analyzer_ends_it():
    """Zeek checks a DNS connection every 10 s after its start and ends it when idle for 9 s: a query
    on the same socket 15 s later is a new flow (a plain UDP flow would last 60 s)."""
    q = ip4(CLIENT, SERVER, udp(5000, 53, b"q"))
    r = ip4(SERVER, CLIENT, udp(53, 5000, b"r"))
    spec = PrefixSpec(3, 80, "first")
    out = list(flows_from_frames([(0.0, 1, eth(q)), (0.01, 1, eth(r)), (15.0, 1, eth(q))], spec))
    assert [len(s.frames) for s in out] == [2, 1]
    out = list(flows_from_frames([(0.0, 1, eth(q)), (0.01, 1, eth(r)), (9.5, 1, eth(q))], spec))
    assert [len(s.frames) for s in out] == [2]  # the check at 10 s has not happened yet: same flow
    u = [ip4(CLIENT, SERVER, udp(5000, 5001, b"q"))] * 2
    assert len(list(flows_from_frames([(0.0, 1, eth(u[0])), (15.0, 1, eth(u[1]))], spec))) == 1


def test_fragments_and_tunnels_make_no_flow():
    """Zeek reassembles fragments and decapsulates IP-in-IP/GRE: none of them is a connection of its own
    from a captured frame, so they are counted and left out."""
    raw = bytes(udp(5000, 53, b"A" * 60))

    gre = ip4(CLIENT, SERVER, udp(1, 2), proto=47)
    table = FlowTable(PrefixSpec(2, 80))
    out = [
        s
        for i, p in enumerate(
            [ip4_raw(CLIENT, SERVER, 17, raw[:32], 0, True), ip4_raw(CLIENT, SERVER, 17, raw[32:], 4), gre]
        )
        for s in table.add(i * 0.01, 1, eth(p))
    ] + table.flush()
    assert out == [] and (table.stats.fragments, table.stats.tunnels, table.stats.flows) == (2, 1, 0)


def test_ipv6_udp_flow():
    q = ip6(CLIENT6, SERVER6, udp(5000, 53, b"q"), nxt=17)
    r = ip6(SERVER6, CLIENT6, udp(53, 5000, b"r"), nxt=17)
    (s,) = feed([q, r])
    assert (s.src, s.dst, s.proto_name) == (CLIENT6, SERVER6, "udp")


def test_non_ip_and_malformed_are_counted():
    table = FlowTable(PrefixSpec(2, 80))
    table.add(0.0, 1, b"\xff" * 6 + b"\x00" * 6 + b"\x08\x06" + b"\0" * 28)  # ARP
    table.add(0.0, 1, eth(b"\x45" + b"\0" * 10))  # cut IPv4 header
    assert (table.stats.non_ip, table.stats.malformed) == (1, 1)


@pytest.mark.parametrize(
    "proto, src, dst, sport, dport",
    [
        (6, "128.232.110.120", "66.35.250.204", 34855, 80),
        (6, "66.35.250.204", "128.232.110.120", 80, 34855),
        (17, "192.0.2.1", "198.51.100.7", 53, 5353),
        (1, "192.0.2.1", "198.51.100.7", 8, 0),
        (1, "192.0.2.1", "198.51.100.7", 3, 3),
        (58, CLIENT6, SERVER6, 128, 0),
    ],
)
def test_community_id_matches_reference_implementation(proto, src, dst, sport, dport):
    ref = communityid.CommunityID()
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    tup = communityid.FlowTuple(proto, src, dst, sport, dport)
    raw = a6 if fam == socket.AF_INET6 else a4
    assert community_id(proto, raw(src), raw(dst), sport, dport) == ref.calc(tup)


def test_handshake_evidence_comes_from_the_prefix_frames_alone():
    """One handshake check (``traffic.handshake.from_frames``), on the frames of a flow's prefix: what Zeek
    exports and the flow table hands out alike, so the rules' require_handshake decides the same live and
    offline. The flow table records nothing itself."""
    from dpack.traffic.encode import Frame
    from dpack.traffic.handshake import from_frames, from_history

    pk = handshake()  # SYN seq 111; SYN-ACK seq 999; ACK ack 1000; data; server ACK
    (s,) = feed(pk, PrefixSpec(3, 80, "first"))
    assert s.handshake is None and from_frames(s.frames)  # SYN, SYN-ACK, the ACK of it
    (s,) = feed(pk, PrefixSpec(3, 80, "payload"))
    assert not from_frames(s.frames)  # SYN and the client's data: no responder packet to tie it to
    blind = pk[:2] + [
        ip4(CLIENT, SERVER, tcp(40000, 22, 0x10, seq=112, ack=0x80000000)),
        ip4(CLIENT, SERVER, tcp(40000, 22, 0x18, b"SSH-2.0-x\r\n", seq=112, ack=0x80000000)),
    ]
    (s,) = feed(blind, PrefixSpec(3, 80, "first"))
    assert not from_frames(s.frames)
    assert not from_frames(feed([pk[0]], PrefixSpec(3, 80, "payload"))[0].frames)  # a lone SYN (scan, flood)
    # the initiator's ACK covers the responder's data
    frames = [Frame(101, p, o) for p, o in [(pk[0], True), (pk[3], True), (pk[4], False)]]
    assert from_frames(frames)  # the client acknowledged 1000: the server's ISN + 1
    frames = [Frame(101, p, o) for p, o in [(pk[0], True), (blind[3], True), (pk[4], False)]]
    assert not from_frames(frames)  # a blind guess at the server's sequence space
    resp_data = ip4(SERVER, CLIENT, tcp(22, 40000, 0x18, b"SSH-2.0-x\r\n", seq=1000, ack=133))
    client_ack = ip4(CLIENT, SERVER, tcp(40000, 22, 0x10, seq=133, ack=1011))
    frames = [Frame(101, p, o) for p, o in [(pk[0], True), (resp_data, False), (client_ack, True)]]
    assert from_frames(frames)
    # a connection summary: Zeek's history letters
    assert from_history("ShADadFf") and not from_history("S") and not from_history("Sr")


def test_the_flow_table_is_capped_and_every_flow_still_gets_its_sample():
    """A flood of one-packet flows: at most ``max_flows`` are open; beyond, the least recently active flow
    ends early (counted in ``evicted``) with the packets it has - no flow is lost, memory stays bounded."""
    table = FlowTable(PrefixSpec(3, 80, "payload"), FlowRules(max_flows=100))
    out = []
    peak = 0
    for i in range(1000):
        frame = eth(ip4(f"10.2.{i >> 8}.{i & 255}", SERVER, udp(1000 + i, 9999, b"x")))
        out += table.add(1_700_000_000 + i * 0.001, 1, frame)
        peak = max(peak, len(table))
    out += table.flush()
    assert peak <= 100 and table.stats.evicted == 900
    assert len(out) == 1000 and len({(s.src, s.sport) for s in out}) == 1000

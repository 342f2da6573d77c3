"""dpack score on several processes: every packet of a flow lands in the same shard, the shards' verdicts
merge back into exactly what one process writes, a failing worker is one clear error; identical inputs in
a batch are scored once and get the same verdict as alone; the block-wise pcap reader."""

from __future__ import annotations

import io
import struct

import dpkt
import numpy as np
import pytest
import torch
from conftest import SAMPLE
from pcaps import CLIENT, CLIENT6, SERVER, SERVER6, eth, handshake, ip4, ip6, sll, tcp, udp, write_pcap

from dpack.errors import DpackError
from dpack.offline.score import score_capture
from dpack.prefix.flowset import encode_samples
from dpack.prefix.model import to_input
from dpack.prefix.scorer import Scorer, _distinct_rows, explain_rows
from dpack.traffic.capture import CaptureStats, read_capture
from dpack.traffic.encode import PrefixSpec
from dpack.traffic.flows import FlowTable
from dpack.traffic.sharding import shard_of


def _fragments(src: str, dst: str, ident: int) -> list[bytes]:
    """A UDP datagram as two IPv4 fragments (the first carries the ports, the later one only data)."""
    first = bytearray(ip4(src, dst, udp(5353, 53, b"x" * 40), ident=ident))
    struct.pack_into("!H", first, 6, 0x2000)  # MF, offset 0
    later = bytearray(first)
    struct.pack_into("!H", later, 6, 0x0003)  # offset 24 bytes: no transport header
    return [bytes(first), bytes(later)]


def mixed_frames() -> list[tuple[float, bytes]]:
    """Many flows of every kind the flow table tells apart, interleaved in time, with idle gaps."""
    frames: list[bytes] = []
    for i in range(40):  # TCP connections from many hosts and ports, some VLAN-tagged
        hs = handshake(client=f"192.0.2.{i + 1}", sport=40000 + 7 * i, dport=(22, 80, 443, 8080)[i % 4])
        frames += [eth(p, vlans=(100,) if i % 5 == 0 else ()) for p in hs]
    for i in range(30):  # UDP queries and answers, v4 and v6
        frames.append(eth(ip4(CLIENT, SERVER, udp(50000 + i, 53, b"q%d" % i))))
        frames.append(eth(ip4(SERVER, CLIENT, udp(53, 50000 + i, b"a%d" % i))))
        frames.append(eth(ip6(CLIENT6, SERVER6, udp(51000 + i, 53, b"q"), nxt=17)))
        frames.append(eth(ip6(SERVER6, CLIENT6, udp(53, 51000 + i, b"a"), nxt=17)))
    for i in range(20):  # ICMP echo pairs and a SYN scan
        req = dpkt.icmp.ICMP(type=8, code=0, data=dpkt.icmp.ICMP.Echo(id=i, seq=1, data=b"ping"))
        rep = dpkt.icmp.ICMP(type=0, code=0, data=dpkt.icmp.ICMP.Echo(id=i, seq=1, data=b"ping"))
        frames += [eth(ip4(CLIENT, SERVER, req)), eth(ip4(SERVER, CLIENT, rep))]
        frames.append(eth(ip4(CLIENT, SERVER, tcp(60000, 1 + i, dpkt.tcp.TH_SYN))))
    for i in range(10):
        frames += [eth(p) for p in _fragments(CLIENT, SERVER, 1000 + i)]
    fin = eth(ip4(CLIENT, SERVER, tcp(40000, 22, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)))
    frames += [fin, eth(handshake()[0])]  # a new SYN after FIN: a new flow on the same 5-tuple
    frames += [b"\xff" * 12 + b"\x08\x06" + b"\0" * 28, eth(b"\x45" + b"\0" * 10)]  # ARP, cut IPv4
    # interleave deterministically, then leave an idle gap in the middle so that some flows expire
    order = sorted(range(len(frames)), key=lambda k: (k * 7919) % len(frames))
    out = []
    for n, k in enumerate(order):
        ts = 1_700_000_000.0 + n * 0.01 + (120.0 if n > len(order) // 2 else 0.0)
        out.append((ts, frames[k]))
    out.sort(key=lambda f: f[0])
    # a few frames of the first half again after the gap: their flows idled out, so new flows
    out += [(out[-1][0] + 0.01 * (j + 1), out[j][1]) for j in range(0, 60, 3)]
    return out


@pytest.mark.parametrize("shards", [2, 3, 5])
def test_every_packet_of_a_flow_lands_in_one_shard(shards):
    table = FlowTable(PrefixSpec(64, 80, "first"))  # N=64: a flow's sample holds all its packets
    samples = list(table.samples((ts, 1, fr) for ts, fr in mixed_frames()))
    assert len(samples) > 150
    lens = {len(s.frames) for s in samples}
    assert 1 in lens and max(lens) >= 5  # lone packets and whole connections
    for s in samples:
        assert len({shard_of(f.linktype, f.data, shards) for f in s.frames}) == 1, s
    used = {shard_of(f.linktype, f.data, shards) for s in samples for f in s.frames}
    assert used == set(range(shards))  # the flows do spread


def test_shard_of_agrees_across_link_layers():
    """The fast path (plain Ethernet/IPv4) and the parsing path give one flow the same shard."""
    p = handshake()[0]
    assert shard_of(1, eth(p), 7) == shard_of(1, eth(p, vlans=(5,)), 7) == shard_of(113, sll(p), 7)
    assert shard_of(101, p, 7) == shard_of(1, eth(p), 7)
    # the same TCP flow with an IPv4 option (record route, 4 bytes): not the fast path's layout
    with_option = bytearray(p[:20] + b"\x07\x04\x04\x00" + p[20:])
    with_option[0] = 0x46
    for shards in (2, 3, 7, 8):
        assert shard_of(1, eth(bytes(with_option)), shards) == shard_of(1, eth(p), shards)


@pytest.mark.parametrize("shards", [2, 3, 8])
def test_shard_array_agrees_with_shard_of_for_every_frame(tmp_path, shards):
    """The array form the sharded reader uses picks the same shard as ``shard_of`` for every frame
    (plain and VLAN Ethernet, IPv6, ICMP, fragments, ARP, cut frames, frames shorter than 38 bytes)."""
    from dpack.traffic.capture import read_blocks
    from dpack.traffic.sharding import plain_mask, shard_array
    from dpack.traffic.sharding import plain_tcp_udp as _plain_ipv4_tcp_udp

    frames = mixed_frames() + [(2e9, eth(ip4(CLIENT, SERVER, udp(1, 2, b""))))[:30], (2e9 + 1, b"\x00" * 5)]
    path = write_pcap(tmp_path / "mixed.pcap", frames)
    (block,) = read_blocks(path)
    want = [shard_of(1, fr, shards) for _, _, fr in read_capture(path)]
    assert shard_array(block, shards).tolist() == want
    assert len(set(want)) == shards
    frames = [fr for _, _, fr in read_capture(path)]
    assert plain_mask(block).tolist() == [_plain_ipv4_tcp_udp(fr) for fr in frames]
    assert 0 < sum(plain_mask(block)) < len(frames)


def test_blocks_of_empty_frames_are_counted_not_fatal(default_model):
    """A block whose frames are all empty (a hostile pcapng can hold zero-length packets)."""
    import numpy as np

    from dpack.traffic.capture import FrameBlock

    empty = FrameBlock(1, b"", np.zeros(3, np.int64), np.zeros(3, np.int64), np.array([1.0, 2.0, 3.0]))
    for shards in (1, 2):
        table = FlowTable(default_model.spec)
        assert list(table.block_samples([empty], 0, shards)) == []
        assert table.stats.non_ip == 3 and table.stats.frames == 3


@pytest.mark.parametrize("capture", ["mixed", "sample"])
def test_sharded_scoring_writes_what_one_process_writes(tmp_path, default_model, capture):
    path = write_pcap(tmp_path / "mixed.pcap", mixed_frames()) if capture == "mixed" else SAMPLE
    scorer = Scorer(default_model, explain="all")
    outputs = {}
    for workers in (1, 2, 3):
        out, seen = io.StringIO(), []
        run = score_capture(path, scorer, out, batch_size=64, workers=workers, on_verdicts=seen.extend)
        outputs[workers] = (
            out.getvalue(),
            run.flows,
            run.flagged,
            [f"{v.score:.6g}" for v in run.top],
            run.flow_stats,
            run.capture.frames,
            [v.community_id for v in seen],
        )
    assert outputs[1][1] > 100 and outputs[1][0].count("\n") == outputs[1][1]
    assert outputs[2] == outputs[1]
    assert outputs[3] == outputs[1]
    if capture == "mixed":
        stats = outputs[1][4]
        assert stats.non_ip == 1 and stats.malformed == 1 and stats.fragments == 20  # both pieces of 10


def test_sharded_scoring_without_verdict_callback_counts_every_flow(default_model):
    one = score_capture(SAMPLE, Scorer(default_model), workers=1)
    two = score_capture(SAMPLE, Scorer(default_model), workers=2)  # shards then send flagged verdicts only
    assert (two.flows, two.flagged, [v.uid or v.community_id for v in two.top]) == (
        one.flows,
        one.flagged,
        [v.uid or v.community_id for v in one.top],
    )


class _FailingScorer(Scorer):
    """Fault injection: the model call fails inside a worker."""

    def verdicts_encoded(self, samples, data, direction):
        raise RuntimeError("injected fault")


def test_a_failing_worker_is_one_clear_error(default_model):
    with pytest.raises(
        DpackError, match="scoring worker dpack-score-.* failed: RuntimeError: injected fault"
    ):
        score_capture(SAMPLE, _FailingScorer(default_model), workers=2)


def test_unreadable_capture_fails_before_any_worker_starts(tmp_path, default_model):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"NOPE" * 10)
    with pytest.raises(DpackError, match="not a pcap or pcapng file"):
        score_capture(bad, Scorer(default_model), workers=2)


def test_identical_inputs_in_a_batch_get_the_verdict_they_get_alone(default_model):
    scan = [ip4(CLIENT, SERVER, tcp(60000 + i, 1 + i % 3, dpkt.tcp.TH_SYN)) for i in range(12)]
    table = FlowTable(default_model.spec)
    samples = list(table.samples((1.0 + i * 0.001, 1, eth(p)) for i, p in enumerate(scan)))
    samples += list(
        FlowTable(default_model.spec).samples((5.0 + i, 1, eth(p)) for i, p in enumerate(handshake()))
    )
    scorer = Scorer(default_model, explain="all")
    together = scorer.verdicts(samples)
    alone = [scorer.verdicts([s])[0] for s in samples]
    assert len({v.score for v in together}) < len(together)  # the scan's SYNs encode alike
    for a, b in zip(together, alone, strict=True):
        assert a.score == pytest.approx(b.score, rel=1e-5, abs=1e-9)
        assert (a.anomalous, a.explanation, a.sport, a.dport) == (
            b.anomalous,
            b.explanation,
            b.sport,
            b.dport,
        )
    together[0].explanation.append("mine")  # verdicts do not share explanation lists
    assert "mine" not in together[1].explanation


def test_reader_handles_records_larger_than_its_block(tmp_path):
    big = [eth(b"\x45" + bytes(20)) + bytes([k]) * 200_000 for k in range(8)]  # 1.6 MB: crosses blocks
    frames = [(1.0 + k, fr) for k, fr in enumerate([b"\x01" * 60, *big, b"\x02" * 60])]
    path = write_pcap(tmp_path / "big.pcap", frames)
    got = [fr for _, _, fr in read_capture(path)]
    assert got == [fr for _, fr in frames]
    raw = path.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(raw[: 24 + 16 + 60 + 3 * (16 + len(big[0])) + 1000])  # inside the 4th big record
    st = CaptureStats()
    got = [fr for _, _, fr in read_capture(cut, st)]
    assert got == [frames[0][1], *big[:3]] and st.truncated == 1 and "inside record 5" in st.notes[0]
    assert struct.unpack("<I", raw[:4])[0] == 0xA1B2C3D4


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"src": 'a"b\\c', "model": "m\u00e9\u2028\x01", "explanation": ['p1."x"', "p2.\n"], "uid": "C\u00ff"},
        {"score": float("nan"), "threshold": float("inf")},
        {"score": -float("inf"), "ts": 1.0000005, "sport": 0, "dport": 65535, "anomalous": True},
        {"score": 1e-300, "threshold": 123456789.0, "ts": 0.0},
        {"detector": "classifier", "category": "brute", "confidence": 0.98765},
    ],
)
def test_text_built_verdict_lines_equal_json_dumps(fields):
    """The verdict line ``dpack score`` writes is exactly ``json.dumps`` of the verdict's dict."""
    import json

    from dpack.verdict import Verdict

    base = {
        "ts": 1_700_000_000.123456789,
        "proto": "tcp",
        "src": "10.0.0.1",
        "sport": 40000,
        "dst": "2001:db8::1",
        "dport": 22,
        "community_id": "1:abc/+=",
        "score": 0.001234567891,
        "threshold": 0.00159057,
        "anomalous": False,
        "model": "dpack-default@03e8",
        "explanation": ["p1.tcp.flags", "p3.absent"],
    }
    v = Verdict(**(base | fields))
    assert v.to_json() == json.dumps(v.to_dict(), separators=(",", ":"))


def test_many_small_blocks_give_the_same_flows_as_one_stream(tmp_path, monkeypatch, default_model):
    """Blocks cut anywhere (here: every few records) and shards that skip whole runs of frames still
    build the flows, expiry order and all, of one table fed frame by frame."""
    import dpack.traffic.capture as capture

    path = write_pcap(tmp_path / "mixed.pcap", mixed_frames())
    spec = PrefixSpec(3, 80, "first")
    whole = [
        (s.order, s.community_id, [f.data for f in s.frames])
        for s in FlowTable(spec).samples(read_capture(path))
    ]
    monkeypatch.setattr(capture, "_BLOCK", 700)
    for shards in (1, 2, 3):
        got = []
        for shard in range(shards):
            table = FlowTable(spec)
            got += [
                (s.order, s.community_id, [f.data for f in s.frames])
                for s in table.block_samples(capture.read_blocks(path), shard, shards)
            ]
        assert sorted(got) == whole, shards
    assert len(list(capture.read_blocks(path))) > 20


@pytest.mark.parametrize("explain", ["anomalous", "all"])
def test_scorer_cache_gives_the_verdicts_of_an_uncached_scorer(default_model, explain):
    """Across batches (repeats of earlier inputs, an LRU smaller than the distinct inputs), every verdict
    equals the uncached one; repeats are answered from the cache, which never outgrows its size."""
    samples = list(FlowTable(default_model.spec).samples(read_capture(SAMPLE)))
    batches = [samples[:40], samples[20:90], samples[:40], samples[200:260], samples[30:50]]
    plain = Scorer(default_model, explain=explain, cache_size=0)
    small = Scorer(default_model, explain=explain, cache_size=16)
    big = Scorer(default_model, explain=explain)

    def view(vs):
        return [(v.community_id, f"{v.score:.6g}", v.anomalous, v.explanation) for v in vs]

    for batch in batches:
        want = view(plain.verdicts(batch))
        assert view(small.verdicts(batch)) == want
        assert view(big.verdicts(batch)) == want
        assert len(small._cache) <= 16
    assert plain.cache_hits == 0 and big.cache_hits > 50 and 0 < small.cache_hits < big.cache_hits
    assert any(v.anomalous for v in big.verdicts(samples)) and len(big._cache) > 16
    a, b = big.verdicts(samples[:2] * 2)[0::2]  # the same input twice: equal lists, not one list
    assert a.explanation == b.explanation and a.explanation is not b.explanation


def test_scorer_scores_and_explains_from_one_pass_as_two_passes_would(default_model):
    """The scorer takes a flagged flow's score and explanation from one forward pass (the gradient by
    hand): its scores are ``score``'s on the same rows bit for bit, and its explanations those of
    autograd's gradients, at live batch sizes and at offline ones."""
    samples = list(FlowTable(default_model.spec).samples(read_capture(SAMPLE)))
    scorer = Scorer(default_model, cache_size=0)
    net, flagged = default_model.net, 0
    for size in (1, 7, 64, 300):
        for i in range(0, min(len(samples), 3 * size), size):
            batch = samples[i : i + size]
            data, direction = encode_samples(batch, default_model.spec)
            first, inverse, _ = _distinct_rows(data, direction)  # the rows the scorer scores, in its order
            d, r = data[first], direction[first]
            x = to_input(d, r)
            with torch.no_grad():
                want = net.score(x).numpy()
            xg = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(net.score(xg).sum(), xg)
            idx = np.flatnonzero(want > default_model.threshold)
            attr = (g * (x - net.x_mean))[idx]
            expl = dict(
                zip(idx.tolist(), explain_rows(default_model, x[idx], d[idx], r[idx], 3, attr), strict=True)
            )
            got = scorer.verdicts(batch)
            assert [v.score for v in got] == [float(want[k]) for k in inverse]
            assert [v.explanation for v in got] == [expl.get(k, []) for k in inverse]
            flagged += len(idx)
    assert flagged > 20

"""Connection records (conn.log-like summaries from the flow table), record tables, segment features, the
public feature tables, the flow-record autoencoder and classifier, and their model files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from conftest import SAMPLE, SAMPLE_LABELS
from pcaps import CLIENT, SERVER, eth, ip4, tcp, udp, write_pcap

from dpack.errors import ModelError
from dpack.records.classifier import load_record_classifier
from dpack.records.features import SegmentState, labelled_records, record_table, records_from_capture
from dpack.records.recordae import cmd, load_record_model
from dpack.records.tables import TableEncoder, TableError, read_nsl_kdd, read_unsw_nb15
from dpack.traffic.conn import ConnRecord, conn_state


@pytest.mark.parametrize(
    ("proto", "history", "resp_pkts", "state"),
    [
        ("tcp", "S", 0, "S0"),
        ("tcp", "Sr", 1, "REJ"),
        ("tcp", "ShR", 1, "RSTO"),
        ("tcp", "ShADadFf", 5, "SF"),
        ("tcp", "ShADad", 4, "S1"),
        ("tcp", "ShADadF", 4, "S2"),
        ("tcp", "ShADadf", 4, "S3"),
        ("tcp", "ShADadr", 4, "RSTR"),
        ("tcp", "SR", 0, "RSTOS0"),
        ("tcp", "SF", 0, "SH"),
        ("tcp", "hr", 2, "RSTRH"),
        ("tcp", "Dd", 2, "OTH"),
        ("udp", "D", 0, "S0"),
        ("udp", "Dd", 1, "SF"),
    ],
)
def test_conn_state_follows_zeek(proto, history, resp_pkts, state):
    assert conn_state(proto, history, resp_pkts) == state


def test_records_count_every_packet(tmp_path):
    """A hand-built capture: one TCP session (handshake, 2 data segments, FINs) and one UDP query without an
    answer; every count is known."""
    frames = [
        (1.00, eth(ip4(CLIENT, SERVER, tcp(40000, 80, 0x02, seq=1000)))),
        (1.01, eth(ip4(SERVER, CLIENT, tcp(80, 40000, 0x12, seq=5000, ack=1001)))),
        (1.02, eth(ip4(CLIENT, SERVER, tcp(40000, 80, 0x10, seq=1001, ack=5001)))),
    ]
    data = [
        eth(ip4(CLIENT, SERVER, tcp(40000, 80, 0x18, b"GET / HTTP/1.0\r\n\r\n", seq=1001, ack=5001))),
        eth(ip4(SERVER, CLIENT, tcp(80, 40000, 0x18, b"HTTP/1.0 200 OK\r\n\r\nhello", seq=5001, ack=1019))),
        eth(ip4(CLIENT, SERVER, tcp(40000, 80, 0x11, seq=1019, ack=5025))),
        eth(ip4(SERVER, CLIENT, tcp(80, 40000, 0x11, seq=5025, ack=1020))),
        eth(ip4(CLIENT, SERVER, udp(5353, 53, b"q" * 30))),
    ]
    frames += [(2.0 + i * 0.5, f) for i, f in enumerate(data)]
    recs = records_from_capture(write_pcap(tmp_path / "c.pcap", frames))
    assert len(recs) == 2
    t, u = recs
    assert (t.proto, t.dport, t.orig_pkts, t.resp_pkts) == ("tcp", 80, 4, 3)
    assert (t.orig_bytes, t.resp_bytes) == (18, 24)
    assert t.history == "ShADdFf" and t.conn_state == "SF"  # the responder never sent a pure ACK
    assert t.orig_ip_bytes == 4 * 40 + 18 and t.resp_ip_bytes == 3 * 40 + 24
    assert t.duration == pytest.approx(3.5 - 1.0)
    assert (u.proto, u.orig_pkts, u.resp_pkts, u.orig_bytes, u.conn_state, u.history) == (
        "udp",
        1,
        0,
        30,
        "S0",
        "D",
    )


def test_sample_records_match_labels_and_attack_shapes():
    lr = labelled_records([SAMPLE])
    n_labels = sum(1 for _ in open(SAMPLE_LABELS)) - 1
    assert len(lr.records) == n_labels and lr.unlabelled == 0
    states = {}
    for r, f in zip(lr.records, lr.family, strict=True):
        states.setdefault(f, set()).add(r.conn_state)
    assert states["nmap_syn"] <= {"REJ", "RSTO"} and "REJ" in states["nmap_syn"]
    assert states["hping_syn_flood"] == {"RSTO"}
    assert "SF" in states["hydra_ssh"]


def rec(ts, src, dst, dport, proto="tcp"):
    return ConnRecord(ts, proto, src, 40000, dst, dport, 0.1, 1, 1, 0, 0, 40, 40, "Sr", "REJ")


def test_segments_expose_a_sweep_and_reset_after_the_gap():
    seg = SegmentState()
    feats = [seg.update(rec(100 + i, "10.0.0.5", f"10.0.1.{i}", 1000 + i)) for i in range(10)]
    assert feats[-1] == [10.0, 10.0, 10.0, 1.0]  # 10 flows, 10 targets, 10 ports, one service group
    other = seg.update(rec(105, "10.0.2.7", "10.0.1.1", 443))  # another source /24: its own segment
    assert other == [1.0, 1.0, 1.0, 1.0]
    later = seg.update(rec(109 + 61, "10.0.0.5", "10.0.1.1", 22))  # 61 s after the last: a new segment
    assert later == [1.0, 1.0, 1.0, 1.0]
    t = record_table([rec(1, "10.0.0.5", "10.0.1.1", 22), rec(0, "10.0.0.5", "10.0.1.2", 23)])
    assert t.numeric_names[-4:] == ["seg_flows", "seg_dst_addrs", "seg_dst_ports", "seg_services"]
    assert t.numeric[:, -4].tolist() == [1.0, 2.0]  # sorted by time before counting
    assert t.groups.tolist() == ["10.0.0.0/24>10.0.1.0/24"] * 2


def test_encoder_unseen_values_and_extremes():
    t = record_table([rec(0, "10.0.0.5", "10.0.1.1", 22), rec(1, "10.0.0.5", "10.0.1.2", 80, "udp")])
    enc = TableEncoder("minmax").fit(t)
    x = enc.transform(t)
    assert x.shape == (2, enc.n_features) and x.min() >= 0 and x.max() <= 1
    t2 = record_table([rec(0, "10.0.0.5", "10.0.1.1", 22, "icmp")])
    t2.numeric[0, 0] = 1e9  # longer than anything seen: clipped to 1
    x2 = enc.transform(t2)
    proto_cols = [i for i, n in enumerate(enc.feature_names) if n.startswith("proto=")]
    assert x2[0, proto_cols].sum() == 0  # icmp was never seen: all zeros, not an error
    assert x2[0, 0] == 1.0


NSL_ROW = (
    "0,tcp,http,SF,215,45076,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,1,1,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,0,0,{},21\n"
)


def test_nsl_kdd_reader(tmp_path):
    p = tmp_path / "KDDTrain+.txt.gz"
    p.write_bytes(
        gzip.compress(
            (
                NSL_ROW.format("normal") + NSL_ROW.format("neptune") + NSL_ROW.format("buffer_overflow")
            ).encode()
        )
    )
    t = read_nsl_kdd(p)
    assert t.y_class.tolist() == [0, 1, 4] and t.class_names[4] == "U2R"
    assert t.numeric.shape == (3, 38) and t.categorical["service"].tolist() == ["http"] * 3
    bad = tmp_path / "bad.txt"
    bad.write_text(NSL_ROW.format("normal") + "0,tcp,http\n")
    with pytest.raises(TableError, match=r"bad.txt:2: 3 fields"):
        read_nsl_kdd(bad)
    bad.write_text(NSL_ROW.format("made_up_attack"))
    with pytest.raises(TableError, match="unknown attack type"):
        read_nsl_kdd(bad)


def test_unsw_reader_bom_crlf_and_consistency(tmp_path):
    head = "id,dur,proto,service,state,spkts,attack_cat,label"
    p = tmp_path / "UNSW_NB15_testing-set.csv"
    p.write_bytes(
        ("\ufeff" + head + "\r\n1,0.5,tcp,-,FIN,4,Normal,0\r\n2,0.1,udp,dns,INT,2,Generic,1\r\n").encode()
    )
    t = read_unsw_nb15(p)
    assert (
        t.numeric_names == ["dur", "spkts"] and t.y_class.tolist() == [0, 1] and t.y_binary.tolist() == [0, 1]
    )
    p.write_bytes((head + "\r\n1,0.5,tcp,-,FIN,4,Normal,1\r\n").encode())
    with pytest.raises(TableError, match="label and attack_cat disagree"):
        read_unsw_nb15(p)


def test_cmd_is_zero_for_one_sample_and_grows_with_shift():
    a = torch.rand(2000, 4) * 2 - 1
    assert float(cmd(a, a)) == pytest.approx(0.0, abs=1e-6)
    near = float(cmd(a, torch.rand(2000, 4) * 2 - 1))
    far = float(cmd(a, (torch.rand(2000, 4) * 2 - 1) * 0.3 + 0.5))
    assert near < 0.1 < far


def test_record_autoencoder_flags_the_sample_attacks(records_model_path):
    """Trained on the sample's benign records: the flood and scan families sit far above benign traffic
    and most of them above the mean + 3 sigma threshold."""
    det = load_record_model(records_model_path)
    lr = labelled_records([SAMPLE])
    t = record_table(lr.records)
    s = det.scores(t)
    fam = np.array(lr.family)[np.argsort([r.ts for r in lr.records], kind="stable")]
    benign = np.char.startswith(fam.astype(str), "benign")
    for f in ("hping_syn_flood", "nmap_syn", "nmap_connect"):
        assert np.median(s[fam == f]) > np.quantile(s[benign], 0.9), f
        assert (s[fam == f] > det.threshold).mean() > 0.5, f
    assert det.meta["thresholds"]["sigma"] == pytest.approx(
        det.meta["score_stats"]["train_mean"] + 3 * det.meta["score_stats"]["train_std"], rel=1e-5
    )


def test_classifier_names_the_sample_families(classifier_model_path):
    clf = load_record_classifier(classifier_model_path)
    lr = labelled_records([SAMPLE])
    t = record_table(lr.records)
    cats, conf = clf.categories(t)
    fam = [lr.family[i] for i in np.argsort([r.ts for r in lr.records], kind="stable")]
    truth = [f if not f.startswith("benign") else "benign" for f in fam]
    acc = np.mean([c == f for c, f in zip(cats, truth, strict=True)])
    assert acc > 0.9 and clf.class_names[0] == "benign" and "nmap_syn" in clf.class_names
    assert ((conf > 0) & (conf <= 1)).all()


@pytest.mark.parametrize("loader", [load_record_model, load_record_classifier])
def test_damaged_record_model_files_are_refused(tmp_path, loader, records_model_path, classifier_model_path):
    bad = tmp_path / "m.pt"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="not a readable dpack model"):
        loader(bad)
    other = classifier_model_path if loader is load_record_model else records_model_path
    with pytest.raises(ModelError, match="not a dpack record"):
        loader(other)  # the other kind of record model
    blob = torch.load(
        records_model_path if loader is load_record_model else classifier_model_path, weights_only=True
    )
    blob["encoder"]["vocab"] = {"proto": ["tcp"]}  # no longer fits the network's input
    torch.save(blob, bad)
    with pytest.raises(ModelError, match="damaged"):
        loader(bad)


def test_train_and_evaluate_commands_for_the_record_detector(tmp_path, capsys):
    from dpack.cli import main

    out = tmp_path / "rae.pt"
    assert main(["train", "--detector", "records", str(SAMPLE), "--out", str(out), "--epochs", "5"]) == 0
    assert "flow-record autoencoder" in capsys.readouterr().out
    js = tmp_path / "m.json"
    rc = main(
        [
            "evaluate",
            "--pcap",
            str(SAMPLE),
            "--labels",
            str(SAMPLE_LABELS),
            "--records-model",
            str(out),
            "--json",
            str(js),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "records-ae" in text and "all attack" in text
    import json

    side = json.loads(js.read_text())["side_by_side"]
    n_labels = sum(1 for _ in open(SAMPLE_LABELS)) - 1
    assert sum(e["flows"] for e in side.values()) == n_labels  # every labelled flow seen by both detectors
    assert all(e["either"] >= max(e["dpack"], e["records_ae"]) for e in side.values())
    assert main(["train", "--detector", "classifier", str(tmp_path / "none.pcap"), "--out", str(out)]) == 2

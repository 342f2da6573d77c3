"""The ``dpack`` command end to end on real captures: score, evaluate, train, and its error lines."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import subprocess
import sys

import dpkt
import pytest
from conftest import DEFAULT_MODEL, ROOT, SAMPLE, SAMPLE_LABELS
from pcaps import write_pcap

from dpack.cli import main

VERDICT_KEYS = {
    "ts",
    "proto",
    "src",
    "sport",
    "dst",
    "dport",
    "community_id",
    "score",
    "threshold",
    "anomalous",
    "model",
    "explanation",
    "context_score",  # the shipped model has a host-context stage
}
METRIC_KEYS = {
    "flows",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "fpr",
    "fnr",
    "auc",
    "threshold",
    "per_family",
    "stages",  # prefix alone, context alone, combined: the shipped model has a host-context stage
}


def run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def read_verdicts(path):
    return [json.loads(line) for line in open(path)]


def labels_by_key():
    with open(SAMPLE_LABELS) as fh:
        return {
            (r["ts_first"], r["src"], int(r["sport"]), r["dst"], int(r["dport"])): r
            for r in csv.DictReader(fh)
        }


def test_score_sample_writes_one_verdict_per_flow(tmp_path, capsys):
    out = tmp_path / "v.jsonl"
    rc, text, err = run(["score", str(SAMPLE), "--verdicts", str(out)], capsys)
    assert rc == 0, err
    vs = read_verdicts(out)
    labels = labels_by_key()
    assert len(vs) == len(labels)
    # a flow the host-context stage flagged says so (``detector``); no other key comes and goes
    assert all(set(v) - {"detector"} == VERDICT_KEYS for v in vs)
    assert {v.get("detector", "prefix") for v in vs} <= {"prefix", "context"}
    assert f"{len(vs)} scored" in text and "top " in text
    # the flagged flows are the attacks: check against the sample's labels
    flagged = [v for v in vs if v["anomalous"]]
    lab = [labels[(f"{v['ts']:.6f}", v["src"], v["sport"], v["dst"], v["dport"])]["label"] for v in flagged]
    attacks = sum(r["label"] == "attack" for r in labels.values())
    assert lab.count("attack") >= 0.95 * attacks
    assert lab.count("benign") <= 0.02 * (len(labels) - attacks)
    # every flagged verdict is explained with named fields: the packets' (p1.tcp.flags) or, for a flow
    # flagged in its host context, the host's (host.new_flows_1s) first
    assert all(
        v["explanation"] and all(e.startswith(("p", "host.")) and "." in e for e in v["explanation"])
        for v in flagged
    )
    assert all(v["explanation"] == [] for v in vs if not v["anomalous"])


def test_evaluate_json_has_exactly_the_keys(tmp_path, capsys):
    js = tmp_path / "m.json"
    rep = tmp_path / "report"
    rc, text, err = run(
        [
            "evaluate",
            "--pcap",
            str(SAMPLE),
            "--labels",
            str(SAMPLE_LABELS),
            "--json",
            str(js),
            "--report",
            str(rep),
        ],
        capsys,
    )
    assert rc == 0, err
    m = json.loads(js.read_text())
    assert set(m) == METRIC_KEYS
    assert m["recall"] >= 0.95 and m["fpr"] <= 0.02 and m["auc"] > 0.99
    assert all(set(e) == {"flows", "detected"} for e in m["per_family"].values())
    assert "hydra_ssh" in m["per_family"] and "benign_dns" in m["per_family"]
    for f in ("roc.png", "pr.png", "scores.png", "index.html"):
        assert (rep / f).stat().st_size > 0
    assert "hping_syn_flood" in text


def rewrite_addresses(src, dst):
    """Copy a capture with every IPv4 address moved to another network (10.201.a.b -> 172.20.b.a).

    Byte-level, so nothing else in the frames changes (re-serialising with dpkt would rewrite the IP
    length of frames cut by the snaplen). Addresses in the IP header and in the header quoted by ICMP
    errors are moved; checksums are left stale, the model never sees them.
    """

    def move(b: bytearray, off: int) -> None:
        if b[off : off + 2] == bytes([10, 201]):
            b[off : off + 4] = bytes([172, 20, b[off + 3], b[off + 2]])

    out = []
    with gzip.open(src, "rb") as fh:
        for ts, frame in dpkt.pcap.Reader(fh):
            b = bytearray(frame)
            if b[12:14] == b"\x08\x00":
                move(b, 26)
                move(b, 30)
                ihl = (b[14] & 0x0F) * 4
                if b[23] == 1 and b[14 + ihl] in (3, 4, 5, 11, 12):  # ICMP error quoting a header
                    move(b, 14 + ihl + 8 + 12)
                    move(b, 14 + ihl + 8 + 16)
            out.append((ts, bytes(b)))
    write_pcap(dst, out, snaplen=256)


def test_masking_rewritten_addresses_give_the_same_verdicts(tmp_path, capsys):
    moved = tmp_path / "moved.pcap"
    rewrite_addresses(SAMPLE, moved)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    # the prefix model alone: the host-context stage knows the lab's hosts by address (their own benign
    # levels), so moved hosts are new hosts to it, by design
    for cap, out in ((SAMPLE, a), (moved, b)):
        assert (
            run(["score", str(cap), "--verdicts", str(out), "--explain", "all", "--no-context"], capsys)[0]
            == 0
        )
    va, vb = read_verdicts(a), read_verdicts(b)
    assert len(va) == len(vb) > 1000
    assert any(x["src"].startswith("172.20.") for x in vb)
    for x, y in zip(va, vb, strict=True):
        assert (x["ts"], x["sport"], x["dport"]) == (y["ts"], y["sport"], y["dport"])
        assert x["score"] == y["score"] and x["anomalous"] == y["anomalous"]
        assert x["explanation"] == y["explanation"]


def test_train_then_score_with_the_new_model(tmp_path, capsys, tiny_model_path):
    from dpack.prefix.modelfile import load_model

    m = load_model(tiny_model_path)
    assert m.spec.n_packets == 2 and m.meta["provenance"]["files"][0]["name"] == SAMPLE.name
    assert m.meta["score_stats"]["calibration_fpr_at_threshold"] <= 0.02
    out = tmp_path / "v.jsonl"
    assert (
        run(["score", str(SAMPLE), "--model", str(tiny_model_path), "--verdicts", str(out)], capsys)[0] == 0
    )
    assert {v["model"].split("@")[0] for v in read_verdicts(out)} == {"tiny"}


def test_train_cli_prints_summary(tmp_path, capsys):
    out = tmp_path / "m.pt"
    rc, text, err = run(
        [
            "train",
            str(SAMPLE),
            "--out",
            str(out),
            "--packets",
            "1",
            "--policy",
            "first",
            "--cnn-epochs",
            "1",
            "--ae-epochs",
            "1",
            "--threshold",
            "sigma",
        ],
        capsys,
    )
    assert rc == 0, err
    assert "threshold" in text and "sigma" in text and out.stat().st_size > 0


@pytest.mark.parametrize(
    "setup, argv_tail, message",
    [
        (None, ["score", "{tmp}/missing.pcap"], "no such file"),
        (lambda t: (t / "zero.pcap").write_bytes(b""), ["score", "{tmp}/zero.pcap"], "empty file"),
        (lambda t: (t / "m.pcap").write_bytes(b"nope" * 20), ["score", "{tmp}/m.pcap"], "not a pcap"),
        (
            lambda t: (t / "bad.pt").write_bytes(b"junk"),
            ["score", str(SAMPLE), "--model", "{tmp}/bad.pt"],
            "not a readable dpack model",
        ),
        (
            lambda t: (t / "c.yaml").write_text("export: {packets: 2, policy: first}\n"),
            ["score", str(SAMPLE), "--config", "{tmp}/c.yaml"],
            "model expects packets=3",
        ),
        (
            lambda t: (t / "c.yaml").write_text("scoring: {batch_size: lots}\n"),
            ["score", str(SAMPLE), "--config", "{tmp}/c.yaml"],
            "expected int",
        ),
        (None, ["evaluate", "--benign", str(SAMPLE)], "needs --benign and --attack"),
        (None, ["train", str(SAMPLE), "--out", "{tmp}/x.pt", "--packets", "0"], "packets per flow"),
        # output paths are checked before any input is read: the capture here does not even exist
        (None, ["score", "{tmp}/missing.pcap", "--verdicts", "{tmp}"], "is a directory"),
        (None, ["score", "{tmp}/missing.pcap", "--rules", "{tmp}"], "is a directory"),
        (
            lambda t: (t / "file").write_text(""),
            ["score", "{tmp}/missing.pcap", "--verdicts", "{tmp}/file/v.jsonl"],
            "is not a directory",
        ),
        (None, ["evaluate", "--pcap", "{tmp}/missing.pcap", "--json", "{tmp}"], "is a directory"),
        (
            lambda t: (t / "report").write_text(""),
            ["evaluate", "--pcap", "{tmp}/missing.pcap", "--report", "{tmp}/report"],
            "needs a directory",
        ),
        (None, ["train", "{tmp}/missing.pcap", "--out", "{tmp}"], "is a directory"),
        (
            lambda t: (t / "c.yaml").write_text("rules: {tick: abc}\n"),
            ["score", str(SAMPLE), "--config", "{tmp}/c.yaml"],
            "rules.tick: expected float",
        ),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path, capsys, setup, argv_tail, message):
    if setup:
        setup(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv_tail]
    rc, out, err = run(argv, capsys)
    assert rc == 2
    assert err.startswith("dpack: error: ") and message in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_truncated_capture_scores_what_it_holds(tmp_path, capsys):
    raw = gzip.decompress(SAMPLE.read_bytes())
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(raw[: len(raw) // 3])
    out = tmp_path / "v.jsonl"
    rc, text, err = run(["score", str(cut), "--verdicts", str(out)], capsys)
    assert rc == 0 and "TRUNCATED" in text
    assert 0 < len(read_verdicts(out)) < 1054


def test_console_script_runs():
    exe = shutil.which("dpack") or str(__import__("pathlib").Path(sys.executable).with_name("dpack"))
    r = subprocess.run(
        [exe, "score", str(SAMPLE), "--model", str(DEFAULT_MODEL)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "flagged" in r.stdout


def test_verdicts_are_never_written_through_a_planted_temporary_name(tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "v.jsonl"
    for name in (".v.jsonl.partial", ".v.jsonl.tmp"):  # the fixed names older versions used
        (tmp_path / name).symlink_to(victim)
    rc, _, err = run(["score", str(SAMPLE), "--verdicts", str(out)], capsys)
    assert rc == 0, err
    assert victim.read_text() == "precious\n"
    assert len(read_verdicts(out)) == 1054 and not out.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".v.jsonl.partial",
        ".v.jsonl.tmp",
        "v.jsonl",
        "victim",
    ]


def _pickle_zip(path):
    """A zip shaped like a torch file whose pickle names a function (os.system): weights_only refuses it."""
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("m/data.pkl", b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.")
        z.writestr("m/version", b"3\n")
        z.writestr("m/byteorder", b"little")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"this is not a model"), "not a PyTorch model archive"),
        (_pickle_zip, "Python objects a dpack model never holds"),
    ],
    ids=["not-an-archive", "hostile-pickle"],
)
def test_a_garbage_model_says_what_is_wrong_without_torchs_advice(tmp_path, capsys, make, message):
    bad = tmp_path / "bad.pt"
    make(bad)
    rc, _, err = run(["score", str(SAMPLE), "--model", str(bad)], capsys)
    assert rc == 2 and message in err and err.count("\n") == 1
    assert "weights_only" not in err and "Re-running" not in err


def test_rules_on_a_path_that_does_not_exist_is_an_error_not_an_empty_list(tmp_path, capsys):
    rc, out, err = run(["rules", "--file", str(tmp_path / "typo.rules"), "list"], capsys)
    assert rc == 2 and "no such rules file" in err and "active entries" not in out


@pytest.mark.parametrize("argv", [["--workers", "500"], ["--top", "-5"], ["--workers", "x"]])
def test_out_of_range_options_are_refused_by_the_parser(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(["score", str(SAMPLE), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and ("out of range" if argv[1] != "x" else "expected an integer") in err


def test_the_package_carries_the_default_model_and_its_card(tmp_path):
    """``pip install .`` or a wheel gives a working default: the model and its card are package data
    (``plugin/dpack/models`` links to ``models/``), found without a checkout."""
    import hashlib
    import subprocess
    import sys
    import zipfile

    from dpack.config import default_model_path

    assert default_model_path().is_file() and default_model_path().parent.parent.name == "dpack"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("dpack-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = z.read("dpack/models/dpack-default.pt")
        card = z.read("dpack/models/MODEL_CARD.md").decode()
    assert hashlib.sha256(shipped).digest() == hashlib.sha256(DEFAULT_MODEL.read_bytes()).digest()
    assert card == (ROOT / "models" / "MODEL_CARD.md").read_text()


def test_score_and_evaluate_say_what_the_model_learned_from(capsys):
    rc, out, _ = run(["score", str(SAMPLE)], capsys)
    assert rc == 0 and "learned from captures benign-train.pcap.gz" in out
    rc, out, _ = run(["evaluate", "--pcap", str(SAMPLE), "--labels", str(SAMPLE_LABELS)], capsys)
    assert rc == 0 and "learned from captures benign-train.pcap.gz" in out


def test_every_option_has_help_and_shows_its_default():
    """`dpack CMD --help` explains every option; an option with a default says which."""
    import argparse

    from dpack.cli import build_parser

    ap = build_parser()
    subs = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)][0]
    for name, p in subs.choices.items():
        for a in p._actions:
            if isinstance(a, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert a.help, f"dpack {name} {a.option_strings or a.dest}: no help text"
        text = p.format_help()
        for a in p._actions:
            if a.option_strings and a.default not in (None, False, argparse.SUPPRESS, [], ""):
                assert "default" in (p._get_formatter()._get_help_string(a) or ""), (name, a.option_strings)
        assert "--help" in text
    assert "(default: 40)" in " ".join(subs.choices["train"].format_help().split())

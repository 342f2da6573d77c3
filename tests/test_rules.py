"""Suricata rules: golden strings, hostile values, policy, state, atomic writes, and real Suricata 7
(``suricata -T`` on every file, and an offline run over the same capture compared with the verdicts)."""

from __future__ import annotations

import collections
import gzip
import json
import os
import shutil
import subprocess

import pytest
from conftest import SAMPLE

from dpack.cli import main
from dpack.errors import RulesError
from dpack.sinks.rules import Policy, Rule, RuleBook, metadata_for
from dpack.verdict import Verdict

SURICATA = shutil.which("suricata")
needs_suricata = pytest.mark.skipif(
    SURICATA is None and not os.environ.get("CI"), reason="suricata not installed (make test installs it)"
)
CID = "1:TsMN5I04jVF30eAs9PhjfCoa+Bw="


def verdict(
    src="192.0.2.66",
    sport=40000,
    dst="198.51.100.10",
    dport=22,
    proto="tcp",
    ts=1000.0,
    uid="CAbc123xyz",
    anomalous=True,
    cid=CID,
    model="dpack-default@03e83604a44e",
    score=0.00625,
):
    return Verdict(
        ts, proto, src, sport, dst, dport, cid, score, 0.0016, anomalous, model, ["p2.tcp.flags"], uid
    )


GOLDEN = {
    (
        "drop",
        "source",
    ): 'drop ip 192.0.2.66 any -> any any (msg:"dpack anomalous source"; threshold:type limit, '
    "track by_src, count 1, seconds 60; metadata:dpack_version 0.1.0, model dpack-default@03e83604a44e, "
    f"score 0.00625, zeek_uid CAbc123xyz, community_id {CID}, flows 1, expires 1700003600; "
    "classtype:misc-attack; sid:1900000; rev:1;)",
    (
        "alert",
        "flow",
    ): 'alert tcp 192.0.2.66 40000 -> 198.51.100.10 22 (msg:"dpack anomalous flow"; flow:established; '
    "threshold:type limit, track by_src, count 1, seconds 60; metadata:dpack_version 0.1.0, "
    f"model dpack-default@03e83604a44e, score 0.00625, zeek_uid CAbc123xyz, community_id {CID}, "
    "expires 1700003600; classtype:misc-attack; sid:1900000; rev:1;)",
}


def book(tmp_path, validate_with=None, **policy):
    return RuleBook(
        Policy(**{"threshold_flows": 1, **policy}), tmp_path / "dpack.rules", suricata=validate_with or ""
    )


@pytest.mark.parametrize("mode, scope", list(GOLDEN))
def test_golden_rules(tmp_path, mode, scope):
    b = book(tmp_path, mode=mode, scope=scope)
    b.observe([verdict()], now=1700000000.0)
    (entry,) = b.state.entries.values()
    assert entry.rule == GOLDEN[(mode, scope)]
    assert Rule.parse(entry.rule).format() == entry.rule


@pytest.mark.parametrize(
    "v, expected",
    [
        (
            verdict(proto="udp", dport=53),
            'alert udp 192.0.2.66 40000 -> 198.51.100.10 53 (msg:"dpack anomalous flow"; flow:established;',
        ),
        (
            verdict(proto="icmp", sport=8, dport=0),
            'alert icmp 192.0.2.66 any -> 198.51.100.10 any (msg:"dpack anomalous flow"; threshold',
        ),
        (verdict(proto="sctp"), "alert ip 192.0.2.66 any -> 198.51.100.10 any ("),
        (
            verdict(src="2001:db8::66", dst="2001:db8::10"),
            "alert tcp 2001:db8::66 40000 -> 2001:db8::10 22 (",
        ),
    ],
)
def test_flow_rule_shapes(tmp_path, v, expected):
    b = book(tmp_path, scope="flow")
    b.observe([v], now=1700000000.0)
    (entry,) = b.state.entries.values()
    assert entry.rule.startswith(expected), entry.rule


HOSTILE = [
    'x"; sid:1; rev:1;) alert ip any any -> any any (msg:"pwn',
    "a;b",
    "line\nbreak",
    "back\\slash",
    "C1)(",
    "",
]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_verdict_fields_never_reach_a_rule(tmp_path, bad):
    b = book(tmp_path, scope="flow")
    b.observe([verdict(uid=bad, cid=bad, model=bad + "@03e83604a44e")], now=1700000000.0)
    (entry,) = b.state.entries.values()
    text = entry.rule
    assert text.count(";)") == 1 and text.count("(") == 1 and "\n" not in text and "\\" not in text
    assert "zeek_uid" not in text and "community_id" not in text and "model" not in text
    assert Rule.parse(text).sid == 1900000


@pytest.mark.parametrize("bad_src", ['10.0.0.1"; drop', "any", "10.0.0.1 any -> any any (", "::g"])
def test_hostile_addresses_are_skipped_and_counted(tmp_path, bad_src):
    b = book(tmp_path)
    b.observe([verdict(src=bad_src), verdict(dst=bad_src)], now=1.0)
    assert b.state.entries == {} and b.stats["invalid"] == 2


def test_rule_type_refuses_what_dpack_never_writes():
    with pytest.raises(RulesError):
        Rule("pass", "ip", "1.2.3.4", "any", "any", "any", "dpack anomalous source", 1900000)
    with pytest.raises(RulesError):
        Rule("drop", "ip", "1.2.3.4", "any", "any", "any", "dpack anomalous source", 12)
    with pytest.raises(RulesError):
        Rule("drop", "ip", "1.2.3.4", "any", "any", "any", "hello", 1900000)
    with pytest.raises(RulesError):
        Rule.parse('alert ip any any -> any any (msg:"x"; content:"|00|"; sid:1900000; rev:1;)')
    assert metadata_for(verdict(uid="bad uid")) == metadata_for(verdict(uid=""))


def test_escalation_window_allowlist_cap_and_expiry(tmp_path):
    b = book(tmp_path, threshold_flows=3, window=60, allowlist=["198.18.0.0/15"], max_entries=2, ttl=100)
    b.observe([verdict(ts=0), verdict(ts=70), verdict(ts=140)], now=0)  # spread wider than the window
    assert b.state.entries == {}
    b.observe([verdict(ts=200), verdict(ts=210), verdict(ts=220)], now=0)
    assert list(b.state.entries) == ["src:192.0.2.66"]
    b.observe([verdict(src="198.18.5.5", ts=t) for t in (1, 2, 3)], now=0)
    assert b.stats["allowlisted"] == 3 and "src:198.18.5.5" not in b.state.entries
    b.observe([verdict(src="192.0.2.77", ts=t) for t in (1, 2, 3)], now=10)
    b.observe([verdict(src="192.0.2.88", ts=t) for t in (1, 2, 3)], now=20)
    assert len(b.state.entries) == 2 and b.stats["capped"] == 1 and "src:192.0.2.66" not in b.state.entries
    assert b.expire(now=115) == ["src:192.0.2.77"]
    b.observe([verdict(anomalous=False, src="192.0.2.99", ts=t) for t in (1, 2, 3)], now=0)
    assert "src:192.0.2.99" not in b.state.entries


def test_require_handshake(tmp_path):
    b = book(tmp_path, require_handshake=True)
    b.observe([verdict(), verdict(src="192.0.2.67")], handshake_ok=[False, True], now=0)
    assert list(b.state.entries) == ["src:192.0.2.67"] and b.stats["unverified"] == 1


def test_state_survives_restart_with_stable_sids_and_no_duplicates(tmp_path):
    b = book(tmp_path, ttl=100)
    b.observe([verdict(src="192.0.2.1"), verdict(src="192.0.2.2")], now=0)
    b.write(validate=False)
    sids = {k: e.sid for k, e in b.state.entries.items()}
    b2 = book(tmp_path, ttl=100)
    assert {k: e.sid for k, e in b2.state.entries.items()} == sids
    b2.observe([verdict(src="192.0.2.1")], now=10)  # active, far from expiry: unchanged
    b2.observe([verdict(src="192.0.2.1")], now=80)  # near expiry: refreshed, same sid, rev 2
    b2.observe([verdict(src="192.0.2.3")], now=80)
    b2.write(validate=False)
    e = b2.state.entries["src:192.0.2.1"]
    assert e.sid == sids["src:192.0.2.1"] and e.rev == 2
    lines = [ln for ln in (tmp_path / "dpack.rules").read_text().splitlines() if not ln.startswith("#")]
    assert len(lines) == 3 and len({Rule.parse(ln).sid for ln in lines}) == 3
    b2.expire(now=1000)
    b2.observe([verdict(src="192.0.2.1")], now=1000)  # back after expiry: the same SID again
    assert b2.state.entries["src:192.0.2.1"].sid == sids["src:192.0.2.1"]


def test_corrupt_state_is_reported_and_backed_up(tmp_path):
    (tmp_path / "dpack.rules.state.json").write_text('{"entries": {"x": ')
    with pytest.raises(RulesError, match="damaged") as ei:
        book(tmp_path)
    assert "a copy is at" in str(ei.value)
    assert len(list(tmp_path.glob("dpack.rules.state.json.corrupt-*"))) == 1
    assert (tmp_path / "dpack.rules.state.json").read_text() == '{"entries": {"x": '  # not silently reset


def test_crash_while_writing_leaves_the_old_file(tmp_path, monkeypatch):
    b = book(tmp_path)
    b.observe([verdict(src="192.0.2.1")], now=0)
    b.write(validate=False)
    before = (tmp_path / "dpack.rules").read_text()
    b.observe([verdict(src="192.0.2.2")], now=0)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        b.write(validate=False)
    monkeypatch.undo()
    assert (tmp_path / "dpack.rules").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@needs_suricata
def test_suricata_accepts_every_shape(tmp_path):
    vs = [
        verdict(src="192.0.2.1"),
        verdict(src="2001:db8::1", dst="2001:db8::2"),
        verdict(proto="udp", dport=53),
        verdict(proto="icmp", sport=8, dport=0),
        verdict(proto="sctp", src="192.0.2.9"),
    ]
    for mode in ("alert", "drop"):
        for scope in ("source", "flow"):
            b = RuleBook(
                Policy(mode=mode, scope=scope, threshold_flows=1), tmp_path / f"{mode}-{scope}.rules"
            )
            b.observe(vs, now=0)
            b.write()  # raises if suricata -T refuses it
            assert len(b.state.entries) >= 3


@needs_suricata
def test_a_rule_suricata_refuses_leaves_the_old_file(tmp_path, monkeypatch):
    b = RuleBook(Policy(threshold_flows=1), tmp_path / "dpack.rules")
    b.observe([verdict()], now=0)
    b.write()
    before = (tmp_path / "dpack.rules").read_text()
    monkeypatch.setattr(
        b, "text", lambda: before + 'alert ip any any -> any any (msg:"x"; nosuchkeyword; sid:1900999;)\n'
    )
    with pytest.raises(RulesError, match="suricata -T refused"):
        b.write()
    assert (tmp_path / "dpack.rules").read_text() == before


def eve_alerts(logdir):
    return [json.loads(ln) for ln in open(logdir / "eve.json") if '"event_type":"alert"' in ln]


def run_suricata(pcap, rules, logdir):
    logdir.mkdir()
    r = subprocess.run(
        [SURICATA, "-r", str(pcap), "-k", "none", "--simulate-ips", "-S", str(rules), "-l", str(logdir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return eve_alerts(logdir)


@needs_suricata
@pytest.mark.parametrize("scope", ["source", "flow"])
def test_offline_truth_suricata_blocks_exactly_what_dpack_flagged(tmp_path, capsys, scope):
    pcap = tmp_path / "sample.pcap"
    pcap.write_bytes(gzip.decompress(SAMPLE.read_bytes()))
    cfg = tmp_path / "dpack.yaml"
    cfg.write_text(f"rules: {{mode: drop, scope: {scope}, allowlist: ['10.201.66.21/32']}}\n")
    rules, verdicts = tmp_path / "dpack.rules", tmp_path / "v.jsonl"
    assert (
        main(["score", str(pcap), "--config", str(cfg), "--rules", str(rules), "--verdicts", str(verdicts)])
        == 0
    )
    assert "checked with suricata -T" in capsys.readouterr().out
    vs = [json.loads(ln) for ln in open(verdicts)]
    flagged = [v for v in vs if v["anomalous"] and v["src"] != "10.201.66.21"]
    alerts = run_suricata(pcap, rules, tmp_path / "eve")
    assert alerts and {a["alert"]["action"] for a in alerts} == {"blocked"}
    assert {a["alert"]["signature_id"] for a in alerts} <= {
        Rule.parse(ln).sid for ln in rules.read_text().splitlines()[1:]
    }
    assert not any(a["src_ip"] == "10.201.66.21" for a in alerts)  # allowlisted: never blocked
    if scope == "source":
        per_src = collections.Counter(v["src"] for v in flagged)
        expected = {s for s, n in per_src.items() if n >= 5}  # the escalation threshold
        assert {a["src_ip"] for a in alerts} == expected
        assert all(s.startswith("10.201.66.") for s in expected)  # attackers only, no benign host
    else:
        keys = {(v["src"], v["sport"], v["dst"], v["dport"]) for v in flagged}
        got = {(a["src_ip"], a["src_port"], a["dest_ip"], a["dest_port"]) for a in alerts}
        assert got <= keys and len(got) > 10
        # a flagged flow with no alert never got past its handshake (a lone SYN: nothing to cut)
        alerted_srcs = {g[0] for g in got}
        assert {"10.201.66.31", "10.201.66.41"} <= alerted_srcs


def test_require_handshake_uses_the_verdicts_own_evidence(tmp_path):
    from dataclasses import replace

    b = book(tmp_path, require_handshake=True)
    b.observe([verdict(), replace(verdict(src="192.0.2.67"), handshake=True)], now=0)
    assert list(b.state.entries) == ["src:192.0.2.67"]


def test_rules_cli_list_show_remove_expire(tmp_path, capsys):
    rules = tmp_path / "dpack.rules"
    b = RuleBook(Policy(threshold_flows=1, ttl=50), rules, suricata=SURICATA or "")
    b.observe([verdict(src="192.0.2.1"), verdict(src="192.0.2.2")])
    b.write(validate=False)
    assert main(["rules", "--file", str(rules), "list"]) == 0
    out = capsys.readouterr().out
    assert "src:192.0.2.1" in out and "2 active entries" in out
    assert main(["rules", "--file", str(rules), "show", "1900001"]) == 0
    assert capsys.readouterr().out.startswith("alert ip 192.0.2.2 any")
    assert main(["rules", "--file", str(rules), "remove", "192.0.2.1"]) == 0
    assert "192.0.2.1" not in rules.read_text() and "192.0.2.2" in rules.read_text()
    assert main(["rules", "--file", str(rules), "remove", "192.0.2.1"]) == 2
    assert "no active entry" in capsys.readouterr().err
    assert main(["rules", "--file", str(rules), "show", "1900000"]) == 2
    b2 = RuleBook(Policy(), rules)
    for e in b2.state.entries.values():
        e.expires = 1.0
    b2.state.save(b2.state_path)
    assert main(["rules", "--file", str(rules), "expire"]) == 0
    assert "1 entry removed; 0 active" in capsys.readouterr().out
    assert "dpack anomalous" not in rules.read_text()


def test_escalation_memory_of_a_spoofed_flood_stays_bounded(tmp_path):
    """Each flagged flow from a new source would add a source to the escalation memory; under a flood of
    distinct sources the memory keeps the most recent ``max_sources`` (forgetting is counted), and a
    source that keeps attacking is still escalated."""
    book = RuleBook(Policy(threshold_flows=3, window=60), tmp_path / "dpack.rules")
    book.max_sources = 1000
    flood = [verdict(src=f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", ts=1000 + i * 1e-3) for i in range(5000)]
    book.observe(flood, now=2000)
    assert len(book.recent) == 1000 and book.stats["forgotten"] == 4000 and not book.state.entries
    # a persistent attacker among the flood: three flows in the window still make a rule
    mixed = []
    for i in range(3):
        mixed += [verdict(src="192.0.2.66", ts=1010 + i)]
        mixed += [verdict(src=f"11.0.{j >> 8}.{j & 255}", ts=1010 + i) for j in range(i * 300, i * 300 + 300)]
    book.observe(mixed, now=2000)
    assert [e.key for e in book.state.entries.values()] == ["src:192.0.2.66"]
    assert len(book.recent) <= 1000
    assert all(len(d) <= 3 for d in book.recent.values())


def test_flow_scope_rules_for_thousands_of_flows_get_unique_sids_in_one_pass(tmp_path):
    n = 20_000
    # sid_last is the dataset rule's: n SIDs for n entries
    policy = Policy(
        scope="flow", threshold_flows=1, max_entries=n, sid_first=1_900_000, sid_last=1_900_000 + n
    )
    book = RuleBook(policy, tmp_path / "dpack.rules")
    book.observe([verdict(src=f"10.1.{i >> 8}.{i & 255}", sport=1024 + i) for i in range(n)], now=2000)
    sids = [e.sid for e in book.state.entries.values()]
    assert len(sids) == len(set(sids)) == n and min(sids) == 1_900_000 and max(sids) == 1_900_000 + n - 1
    # the SID range is full: one more flow evicts the oldest entry and reuses its SID
    book.observe([verdict(src="10.9.9.9", sport=9)], now=2001)
    assert len(book.state.entries) == n and book.stats["capped"] == 1
    assert len({e.sid for e in book.state.entries.values()}) == n

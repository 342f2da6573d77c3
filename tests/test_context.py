"""The host-context stage: causal, bounded host state; a stage fitted on benign histories; one code path
for dpack score (one process or shards) and the live pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import DEFAULT_MODEL, SAMPLE

from dpack.context.stage import COLUMNS, ContextScorer, failed_rows, fit
from dpack.context.state import FEATURES, HISTORY, HostKey, HostState
from dpack.errors import ModelError
from dpack.verdict import Verdict


def v(src, ts, dst="10.0.0.1", dport=80, failed=False, score=0.001, anomalous=False):
    return Verdict(ts, "tcp", src, 40000, dst, dport, "", score, 0.002, anomalous, "m", [], failed=failed)


def test_features_count_only_the_past_window_and_the_flow_itself():
    st = HostState()
    f = dict(zip(FEATURES, st.observe("10.0.0.9", 100.0, "10.0.0.1", 80, False)[1], strict=True))
    assert f["host.new_flows_1s"] == f["host.new_flows_60s"] == 1 and f["host.responders_60s"] == 1
    for i in range(20):  # 20 flows to 20 responders over 19 s, every third failed
        h, _ = st.observe("10.0.0.9", 100.0 + i, f"10.0.1.{i}", 22, i % 3 == 0)
        st.add(h, 100.0 + i, f"10.0.1.{i}", 22, i % 3 == 0, False)
    f = dict(zip(FEATURES, st.observe("10.0.0.9", 119.5, "10.0.1.19", 22, False)[1], strict=True))
    ages = [119.5 - (100.0 + i) for i in range(20)]
    for name, window in (("host.new_flows_1s", 1), ("host.new_flows_10s", 10), ("host.new_flows_60s", 60)):
        # decayed counts: the flows of about the last window, never saturated
        assert f[name] == pytest.approx(1 + sum(math.exp(-a / window) for a in ages), rel=1e-5)
    assert f["host.same_service_60s"] == pytest.approx(1 + math.exp(-0.5 / 60), rel=1e-5)
    assert f["host.responders_60s"] == 20 and f["host.ports_60s"] == 1
    failed = sum(math.exp(-a / 60) for i, a in enumerate(ages) if i % 3 == 0)  # 7 of them, decayed
    assert f["host.failed_60s"] == pytest.approx(failed, rel=1e-5)
    assert f["host.failed_share_60s"] == pytest.approx(failed / f["host.new_flows_60s"], rel=1e-5)
    # a minute later the window is empty again; another host never saw any of it
    assert st.observe("10.0.0.9", 1000.0, "x", 1, False)[1][2] == pytest.approx(1, abs=1e-4)
    assert st.observe("10.0.0.8", 119.5, "10.0.1.19", 22, False)[1][2] == 1


def test_host_state_is_bounded_under_a_flood_of_spoofed_sources():
    st = HostState(max_hosts=1000)
    for i in range(50_000):
        src = f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
        h, _ = st.observe(src, float(i), "10.0.0.1", 80, True)
        st.add(h, float(i), "10.0.0.1", 80, True, False)
    assert len(st.hosts) == 1000 and st.forgotten == 49_000 and len(st._keys) <= 2000
    for _ in range(3 * HISTORY):  # one busy host keeps HISTORY flows at most
        st.add("10.9.9.9", 1.0, "10.0.0.1", 80, False, False)
    assert len(st.hosts["10.9.9.9"].ring) == HISTORY and sum(st.hosts["10.9.9.9"].ports.values()) == HISTORY


def test_host_keys():
    assert HostKey().of("192.0.2.7") == "192.0.2.7"
    assert HostKey(24).of("192.0.2.7") == "192.0.2.0"
    assert HostKey().of("2001:db8:1:2:aaaa::1") == HostKey().of("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::"
    with pytest.raises(ValueError):
        HostKey(0, 64)


def test_failed_rows_read_no_answer_and_resets_from_the_encoded_input():
    data = np.zeros((3, 2, 80), dtype=np.uint8)
    direction = np.array([[1, -1], [1, 0], [1, -1]], dtype=np.int8)
    data[:, :, 0], data[:, :, 9] = 0x45, 6  # IPv4, TCP
    data[2, 1, 20 + 13] = 0x14  # the answer is RST+ACK
    assert failed_rows(data, direction).tolist() == [False, True, True]


def _stream(n_hosts=8, flows=3000, seed=0):
    rng = np.random.default_rng(seed)
    return [
        v(f"10.1.0.{rng.integers(n_hosts)}", 1000.0 + i * rng.uniform(0.5, 3.0), f"10.2.0.{rng.integers(20)}",
          int(rng.choice([53, 80, 443])), bool(rng.random() < 0.1), float(rng.uniform(0.0002, 0.0019)))
        for i in range(flows)
    ]  # fmt: skip


def _fitted(rows_from, held_back=None):
    """The stage fitted on every other flow of ``rows_from`` and calibrated on the others, or on all of it
    and calibrated on ``held_back`` (another stretch of the same site: adjacent flows share a host history)."""
    from dpack.context.stage import context_rows, service_of
    from dpack.context.state import HostState

    rows, hosts = context_rows(HostState(HostKey()), rows_from)
    svc = [service_of(x) for x in rows_from]
    if held_back is None:
        fit_part, back = (rows[::2], hosts[::2], svc[::2]), (rows[1::2], hosts[1::2], svc[1::2])
    else:
        fit_part = (rows, hosts, svc)
        back = (*context_rows(HostState(HostKey()), held_back), [service_of(x) for x in held_back])
    return fit(*fit_part, *back, 0.01, HostKey(), {"prefix_threshold": 0.002})


def test_a_flood_of_ordinary_requests_is_caught_by_its_host_context():
    """Each GET of the flood scores like benign traffic on its own (prefix score under the threshold);
    the host's rate makes it anomalous, and the explanation names the host features."""
    stage = _fitted(_stream())
    benign = _stream(seed=1)
    flood = [v("10.1.0.200", 2000.0 + i * 0.005, "10.2.0.1", 80, score=0.001) for i in range(300)]
    sc = ContextScorer(stage)
    sc.apply(benign)
    sc.apply(flood)
    assert sum(x.anomalous for x in benign) / len(benign) < 0.05
    caught = [x for x in flood if x.anomalous]
    assert all(x.anomalous for x in flood[-150:])  # once its rate is beyond any benign host's
    assert len(caught) >= 200 and all(x.detector == "context" for x in caught)
    assert caught[-1].explanation[0].startswith("host.")
    assert all(x.context_score is not None for x in benign + flood)


def _sample_with_synthetic_families(tmp_path):
    """The lab sample merged with tools/synth_families.py's flows (a flood of GETs, brute forces, a slow
    sweep, a benign load test): ``val-synth.pcap`` under ``tmp_path/synth``."""
    import subprocess
    import sys

    from conftest import ROOT

    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "synth_families.py"), str(SAMPLE), str(tmp_path / "synth")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return tmp_path / "synth" / "val-synth.pcap"


def test_explain_none_leaves_the_stage_s_verdicts_unexplained_too(tmp_path, capsys):
    """``--explain none`` (``scoring.explain: none``): no verdict names features, the stage's flagged
    flows included (the shipped model on the sample with tools/synth_families.py's flows); the decisions
    are those of the default explain mode."""
    from dpack.cli import main

    capture = _sample_with_synthetic_families(tmp_path)
    runs = {}
    for mode in ("anomalous", "none"):
        out = tmp_path / f"{mode}.jsonl"
        assert main(["score", str(capture), "--verdicts", str(out), "--explain", mode]) == 0
        runs[mode] = [json.loads(x) for x in out.read_text().splitlines()]
    capsys.readouterr()
    by_stage = [x for x in runs["anomalous"] if x.get("detector") == "context"]
    assert by_stage and all(x["explanation"][0].startswith("host.") for x in by_stage)
    assert [x["anomalous"] for x in runs["none"]] == [x["anomalous"] for x in runs["anomalous"]]
    assert all(x["explanation"] == [] for x in runs["none"])


def test_the_stage_round_trips_through_the_model_file_and_damage_is_refused(tmp_path):
    import torch

    from dpack.prefix.modelfile import load_model

    blob = torch.load(DEFAULT_MODEL, weights_only=True)
    stage = _fitted(_stream())
    stage.provenance["prefix_threshold"] = blob["threshold"]
    blob["context"] = stage.to_blob()
    good = tmp_path / "ctx.pt"
    torch.save(blob, good)
    m = load_model(good)
    assert m.context is not None and m.context.threshold == stage.threshold and m.context.columns == COLUMNS
    for damage in (
        {"columns": ["prefix.score"]},
        {"threshold": float("nan")},
        {"format_version": 99},
        {"levels": "x"},
        {"provenance": {"prefix_threshold": blob["threshold"] * 2}},
    ):
        bad = dict(blob, context={**blob["context"], **damage})
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(ModelError) as err:
            load_model(tmp_path / "bad.pt")
        assert "\n" not in str(err.value)


def test_score_applies_the_stage_the_same_on_one_core_and_on_shards(tmp_path):
    """Shards split flows, not hosts: the stage runs on the merged stream, so 2 shards give the verdicts
    one process gives."""
    import io
    import json

    from dpack.offline.context_fit import fit_context
    from dpack.offline.score import score_capture
    from dpack.prefix.modelfile import load_model
    from dpack.prefix.scorer import Scorer

    out = tmp_path / "ctx.pt"
    fit_context(load_model(DEFAULT_MODEL), [SAMPLE], out, target_fpr=0.01)
    model = load_model(out)
    texts = []
    for workers in (1, 2):
        buf = io.StringIO()
        ctx = ContextScorer(model.context)
        score_capture(SAMPLE, Scorer(model), buf, 512, workers=workers, context=ctx)
        texts.append(buf.getvalue())
    assert texts[0] == texts[1]
    lines = [json.loads(x) for x in texts[0].splitlines()]
    assert len(lines) == 1054 and all("context_score" in x for x in lines)


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
def test_serve_gives_the_verdicts_dpack_score_gives_with_host_context(tmp_path, peer, sample_recs, workers):
    """Live (the peer sends the sample's flows as Zeek would, in batches of 64; with 2 workers every
    host's flows go to one worker) against offline on the same flows: same decision and explanation."""
    import io
    import json

    from servekit import Running, make_cfg, send_batches, wait_for

    from dpack.offline.context_fit import fit_context
    from dpack.offline.score import score_capture
    from dpack.prefix.modelfile import load_model
    from dpack.prefix.scorer import Scorer

    out = tmp_path / "ctx.pt"
    fit_context(load_model(DEFAULT_MODEL), [SAMPLE], out, target_fpr=0.01)
    model = load_model(out)
    buf = io.StringIO()
    score_capture(SAMPLE, Scorer(model), buf, 4096, context=ContextScorer(model.context))
    offline = {}
    for line in buf.getvalue().splitlines():
        x = json.loads(line)
        offline[(x["src"], x["sport"], x["dst"], x["dport"])] = (x["anomalous"], ",".join(x["explanation"]))
    run = Running(make_cfg(tmp_path, peer, out, workers=workers))
    try:
        assert peer.connected.wait(10)
        send_batches(peer, sample_recs)
        wait_for(lambda: len(peer.verdicts()) == len(sample_recs), what="every verdict")
    finally:
        run.stop()
    assert peer.connection_verdicts() == []  # the stage's verdicts are flow verdicts (DPack::verdicts)
    live = {}
    for r in peer.verdicts():
        live[(str(r[1]), r[2].number, str(r[3]), r[4].number)] = (r[7], r[9])
    assert len(live) == len(offline) == 1054
    differ = [k for k in offline if offline[k] != live.get(k)]
    assert differ == [], [(k, offline[k], live.get(k)) for k in differ[:3]] + [next(iter(live.items()))]
    assert sum(a for a, _ in offline.values()) > 0


def _busy_resolver_site(seed, hosts=8, seconds=1200.0):
    """Workstations at about 2 flows a second each, most of them queries to one resolver."""
    rng = np.random.default_rng(seed)
    out, t = [], 1000.0
    while t < 1000.0 + seconds:
        t += rng.exponential(1 / (2 * hosts))
        dns = rng.random() < 0.8
        out.append(
            v(
                f"10.1.0.{rng.integers(hosts)}",
                t,
                "10.2.0.53" if dns else f"10.2.0.{rng.integers(20)}",
                53 if dns else int(rng.choice([80, 443])),
                score=float(rng.uniform(0.0002, 0.0019)),
            )
        )
    return out  # fmt: skip


def test_repeats_are_measured_against_the_service_a_brute_force_at_an_ordinary_rate_is_caught():
    """A new host logging in to SSH 3 times a second opens flows no faster than a workstation and repeats
    one responder:port no more often than a workstation asks its resolver; SSH is never repeated like
    that, so the repeats, measured against the service's benign level, flag it."""
    stage = _fitted(_busy_resolver_site(0), held_back=_busy_resolver_site(2))
    assert (
        stage.services["tcp/53"] > 20 * stage.services["tcp/22" if "tcp/22" in stage.services else "tcp/80"]
    )
    sc = ContextScorer(stage)
    benign = _busy_resolver_site(1)
    sc.apply(benign)
    brute = [v("10.1.0.200", 1000.0 + i / 3, "10.2.0.22", 22, score=0.001) for i in range(200)]
    sc.apply(brute)
    assert sum(x.anomalous for x in benign) / len(benign) < 0.02
    assert sum(x.anomalous for x in brute[100:]) >= 95  # once its repeats are beyond the service's
    assert any(e == "host.same_service_60s" for x in brute if x.anomalous for e in x.explanation)


def test_rules_escalate_on_the_stage_s_host_count_an_ipv6_attacker_counts_per_64(tmp_path):
    """Each flow from a new address of one /64: the rules' own count by address never reaches 5; the
    stage's count of the host (its /64) does, and the rule blocks the address of the flow that did."""
    from dpack.sinks.rules import Policy, RuleBook

    stage = _fitted(_stream())
    attack = [
        v(f"2001:db8:1:2::{i:x}", 5000.0 + i, f"10.2.0.{i}", 22, score=0.5, anomalous=True)
        for i in range(1, 9)
    ]
    for with_stage in (False, True):
        if with_stage:
            ContextScorer(stage, escalation=(60.0, 5)).apply(attack)
            assert [x.host_alarms for x in attack] == [1, 2, 3, 4, 5, 5, 5, 5]
        book = RuleBook(Policy(threshold_flows=5), tmp_path / f"r{with_stage}.rules")
        added = book.observe(attack, now=0.0)
        assert added == ([f"src:2001:db8:1:2::{i:x}" for i in range(5, 9)] if with_stage else [])


def test_real_zeek_and_serve_with_workers_decide_host_context_as_dpack_score(zeek, tmp_path):
    """The real Zeek (``zeek -r`` with ``DPack::score_traces``) exports the lab sample merged with flows
    that are ordinary one by one (tools/synth_families.py: a flood of GETs, brute forces, a slow sweep,
    a benign load test) to ``dpack serve`` with two scoring workers and the shipped model with a stage
    fitted on lab-dev benign-train (``dpack train-context``); every
    verdict in dpack.log is the one ``dpack score`` gives the same capture (decision, detector and
    explanation), the stage flags flows the prefix does not, and the flood's host raises a notice."""
    import zeeklab
    from conftest import LAB_DEV

    from dpack.offline.context_fit import fit_context
    from dpack.prefix.modelfile import load_model

    benign = LAB_DEV / "benign-train.pcap.gz"
    if not benign.exists():
        pytest.skip("lab-dev is not beside the repository")
    capture = _sample_with_synthetic_families(tmp_path)
    model = tmp_path / "ctx.pt"
    fit_context(load_model(DEFAULT_MODEL), [benign], model)
    offline = {}
    for o in zeeklab.offline_verdicts(
        [capture], tmp_path / "offline.jsonl", ["--model", str(model), "--explain", "anomalous"]
    ):
        offline.setdefault((o["src"], o["sport"], o["dst"], o["dport"]), []).append(o)

    serve, ws, _ = zeeklab.serve_for_zeek(tmp_path, model, workers=2)
    try:
        logs = zeeklab.read_with_zeek(
            capture, tmp_path / "zeek", zeeklab.site_dir(tmp_path), [f"DPack::listen_port={ws}/tcp"]
        )
    finally:
        zeeklab.stop(serve)
    live = [e for e in zeeklab.read_zeek_log(logs / "dpack.log") if e["detector"] in ("prefix", "context")]
    conns = [c for c in zeeklab.read_zeek_log(logs / "conn.log") if c["proto"] in ("tcp", "udp", "icmp")]
    assert len(conns) > 2500 and len({e["uid"] for e in live}) == len(live) == len(conns)
    differ = []
    for e in live:
        key = (e["id.orig_h"], int(e["id.orig_p"]), e["id.resp_h"], int(e["id.resp_p"]))
        (o,) = offline[key]  # every 5-tuple of this capture is one connection
        flagged = e["anomalous"] == "T"
        said = (flagged, e["detector"], e["explanation"] if flagged else "")
        want = (o["anomalous"], o.get("detector", "prefix"), ",".join(o["explanation"]) if flagged else "")
        if said != want:
            differ.append((key, said, want))
    assert differ == [], differ[:3]
    by_stage = [e for e in live if e["detector"] == "context"]
    assert len(by_stage) > 100 and all(e["explanation"].startswith("host.") for e in by_stage)
    noticed = {n["id.orig_h"] for n in zeeklab.read_zeek_log(logs / "notice.log")}
    assert "10.201.1.201" in noticed  # the flood of GETs (tools/synth_families.py FLOOD)

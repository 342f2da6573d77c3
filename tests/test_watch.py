"""What ``dpack serve`` watches in its own verdicts: score drift of a learned model (``prefix/drift.py``)
and the day-one guard of the shipped model (``serve/watch.py``). Sites from tools/ordinary_site.py (a
benign network unlike lab-dev), models trained for real, verdicts over a real WebSocket from a peer
that speaks Zeek's format; the Zeek side (notice, reporter message) is tests/btest/dpack/status.zeek."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import DEFAULT_MODEL, ROOT, SAMPLE
from servekit import Running, make_cfg, send_batches, wait_for

sys.path.insert(0, str(ROOT / "tools"))
import ordinary_site
from zeekpeer import samples_from_pcap

from dpack.prefix.drift import DriftWatch, checked_baseline, psi, score_baseline
from dpack.prefix.flowset import extract
from dpack.prefix.modelfile import load_model
from dpack.prefix.scorer import Scorer
from dpack.prefix.train import TrainOptions, train
from dpack.serve.watch import GUARD_PREFIX, DayOneGuard
from dpack.verdict import Verdict
from dpack.zeek import contract as C

AT = {n: i for i, (n, _) in enumerate(C.VERDICT)}
SHIFT = {"dns_unanswered": 40}  # the resolver stops answering a third of the queries


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A site model learned on 10 minutes of the site; 10 more minutes with the same mix; and 10 with
    the mix changed (more unanswered DNS queries)."""
    d = tmp_path_factory.mktemp("drift")
    learn = ordinary_site.write(d / "learn.pcap", minutes=10, seed=3)
    same = ordinary_site.write(d / "same.pcap", minutes=10, seed=4)
    shifted = ordinary_site.write(d / "shifted.pcap", minutes=10, seed=6, mix=SHIFT)
    train([learn], d / "site.pt", TrainOptions(target_fpr=0.005, seed=1))
    return d / "site.pt", same, shifted


def _verdicts(model, capture):
    fs = extract([str(capture)], model.spec)
    return Scorer(model, explain="none").verdicts_encoded(fs.samples, fs.data, fs.direction)


def test_a_trained_model_carries_its_benign_baseline_per_service(site):
    model = load_model(site[0])
    base = checked_baseline(model.meta["score_baseline"])
    assert {"udp/53", "tcp/80", "*"} <= set(base)
    for edges, expected in base.values():
        assert len(expected) == len(edges) + 1 and expected.sum() == pytest.approx(1)
    # damaged: drift watching is off, the model still loads
    assert checked_baseline({"udp/53": {"edges": [2.0, 1.0], "expected": [0.5, 0.3, 0.2]}}) == {}
    assert checked_baseline("junk") == {} and checked_baseline({"x": {"edges": []}}) == {}


def test_drift_is_raised_when_the_benign_mix_changes_and_silent_when_it_does_not(site):
    path, same, shifted = site
    model = load_model(path)
    base = checked_baseline(model.meta["score_baseline"])
    quiet = DriftWatch(base, window=500)
    assert quiet.add(_verdicts(model, same)) == []
    assert quiet.last and max(quiet.last.values()) < 0.15, quiet.last  # windows were checked, all calm
    watch = DriftWatch(base, window=500)
    alarms = watch.add(_verdicts(model, shifted))
    assert [s for s, _ in alarms] == ["udp/53"], watch.last  # the service whose mix changed, alone
    assert alarms[0][1].startswith("udp/53: ") and "relearn" in alarms[0][1]
    assert watch.add(_verdicts(model, shifted)) == []  # said once while it lasts


def test_psi_and_baseline_on_known_numbers():
    rng = np.random.default_rng(0)
    s = rng.normal(size=20_000)
    b = checked_baseline(score_baseline(s, ["tcp/22"] * 20_000, threshold=10.0))
    edges, expected = b["tcp/22"]
    assert len(edges) == 9 and np.allclose(expected, 0.1, atol=0.01)
    same = np.bincount(np.searchsorted(edges, rng.normal(size=2000), side="right"), minlength=10)
    moved = np.bincount(np.searchsorted(edges, rng.normal(1.0, size=2000), side="right"), minlength=10)
    assert psi(same, expected) < 0.02 < 0.25 < psi(moved, expected)
    # tied scores (alike flows) make fewer bins, with their real shares: no drift from ties alone
    tied = np.repeat([1.0, 2.0, 3.0], [5000, 3000, 2000])
    edges, expected = checked_baseline(score_baseline(tied, ["udp/53"] * len(tied), 10.0))["udp/53"]
    assert len(edges) == 3
    again = np.bincount(np.searchsorted(edges, np.repeat([1.0, 2.0, 3.0], [500, 300, 200]), side="right"), minlength=4)  # fmt: skip
    assert psi(again, expected) < 0.01


def test_serve_says_drift_to_zeek_and_the_metrics(tmp_path, peer, site):
    path, same, shifted = site
    run = Running(make_cfg(tmp_path, peer, path, drift_window=500, watch=False))
    try:
        assert peer.connected.wait(10)
        recs = samples_from_pcap(str(same))
        send_batches(peer, recs)
        wait_for(lambda: len(peer.verdicts()) == len(recs), what="verdicts of the same mix")
        assert peer.statuses() == [] and run.m["drift_alarms"] == 0
        more = samples_from_pcap(str(shifted))
        send_batches(peer, more)
        wait_for(lambda: peer.statuses(), what="the drift status")
        kind, msg = peer.statuses()[0]
        assert kind == "model_drift" and msg.startswith("udp/53: ")
        wait_for(lambda: run.m["drift_alarms"] == 1, what="the drift counter")
    finally:
        run.stop()


def _ids(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _serve_default_with_rules(tmp_path, peer, recs, **serve):
    """dpack serve on the shipped model (guard: auto) with a rules file; every verdict of ``recs`` in.
    Returns the running service and the rules file's entries (rule lines)."""
    rules = tmp_path / "dpack.rules"
    cfg = make_cfg(tmp_path, peer, DEFAULT_MODEL, guard="auto", watch=False, **serve)
    cfg.rules = {"file": str(rules), "state": str(tmp_path / "state.json")}
    run = Running(cfg)
    assert peer.connected.wait(10)
    send_batches(peer, recs)
    wait_for(lambda: len(peer.verdicts()) == len(recs), what="every verdict")

    def entries():
        lines = rules.read_text().splitlines() if rules.exists() else []
        return [ln for ln in lines if ln.startswith(("alert", "drop"))]

    return run, entries


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
def test_day_one_guard_holds_notices_alerts_and_rules_when_the_shipped_model_does_not_fit(
    tmp_path, peer, workers
):
    """The shipped lab model on a site it never saw flags most flows of most hosts: the guard engages,
    says so to Zeek (reporter warning) and in the metrics, every verdict still reaches Zeek's log, but
    with the model named guarded:..., and no SIEM alert and no rule is written."""
    cap = ordinary_site.write(tmp_path / "site.pcap", minutes=6, seed=8)
    recs = samples_from_pcap(str(cap))
    run, entries = _serve_default_with_rules(tmp_path, peer, recs, workers=workers)
    try:
        got = peer.verdicts()
        guarded = [v for v in got if v[AT["model"]].startswith(GUARD_PREFIX)]
        assert len(guarded) == len(recs) and sum(v[AT["anomalous"]] for v in guarded) > len(guarded) // 2
        wait_for(lambda: any(k == "guard_on" for k, _ in peer.statuses()), what="the guard's status")
        msg = next(m for k, m in peer.statuses() if k == "guard_on")
        assert "does not fit this network" in msg and "learn.enabled" in msg
        wait_for(lambda: run.service.metrics.guard_active >= 1, what="the gauge")
        assert run.m["guard_engaged"] >= 1
        # before it engaged, no rule (warm-up); after, none either; no SIEM alert for a held verdict
        assert entries() == []
        alerts = _ids(tmp_path / "alerts.jsonl")
        held = {v[AT["uid"]] for v in guarded}
        assert not any(a.get("zeek", {}).get("uid") in held for a in alerts)
    finally:
        run.stop()


def test_day_one_guard_lets_a_fitting_model_through_after_its_warm_up(tmp_path, peer):
    """On lab traffic the shipped model fits: the guard never engages; once its warm-up is over, the
    attackers of the sample get rules (and no benign host does)."""
    recs = samples_from_pcap(str(SAMPLE))
    run, entries = _serve_default_with_rules(tmp_path, peer, recs)
    try:
        held = [v[AT["model"]].startswith(GUARD_PREFIX) for v in peer.verdicts()]
        # the warm-up's verdicts are held (logged, not noticed), then none; the batch that ends the
        # warm-up is judged with it, so fewer than 500 are held
        k = held.index(False)
        assert 100 <= k < 500 and all(held[:k]) and not any(held[k:]), k
        assert peer.statuses() == [] and run.m["guard_engaged"] == 0
        wait_for(lambda: any("10.201.66." in e for e in entries()), what="rules for the attackers")
        blocked = {e.split(" ")[2] for e in entries()}
        assert blocked and all(ip.startswith("10.201.66.") for ip in blocked), blocked
    finally:
        run.stop()


def test_the_guard_judges_hosts_not_flows():
    """One host flooding (every flow flagged) is an attack, not a misfit; most hosts flagged is."""

    def v(src, bad):
        return Verdict(0.0, "tcp", src, 1, "10.0.0.1", 80, "", 1.0 if bad else 0.0, 0.5, bad, "m")

    g = DayOneGuard(window=1000, share=0.25, min_hosts=10)
    assert g.pending and g.add([v(f"10.0.1.{i % 40}", False) for i in range(100)]) is None  # warming up
    flood = [v("10.0.9.9", True) for _ in range(800)] + [v(f"10.0.1.{i % 40}", False) for i in range(200)]
    assert g.add(flood) == "fits" and not g.engaged and not g.pending
    assert g.add([v(f"10.0.1.{i % 40}", i % 2 == 0) for i in range(1000)]) == "on" and g.engaged
    assert g.add([v(f"10.0.1.{i % 40}", False) for i in range(1000)]) == "off" and not g.engaged

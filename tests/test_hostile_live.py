"""The live path under hostile input: each class of input that once stopped ``dpack serve`` (or a part of
it) is sent here through a running service, with scoring in the serving process and in 2 workers; the
service must keep scoring, count what it skipped, and lose no verdict of the well-formed flows.

The peer is tests/zeekpeer.py, a fault injector: the real Zeek never sends most of these frames, which is
why they need a fake to be sent at all."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DEFAULT_MODEL
from servekit import Running, make_cfg, send_batches, wait_for
from zeekpeer import samples_frame

from dpack.config import load_config
from dpack.errors import ConfigError
from dpack.sinks.rules import Rule
from dpack.zeek import contract as C
from dpack.zeek.codec import parse_samples
from dpack.zeek.wire import decode_message

IN_PROCESS_AND_WORKERS = pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
SAMPLE_FIELDS = [n for n, _ in C.SAMPLE]


def dpack_exe() -> str:
    return shutil.which("dpack") or str(Path(sys.executable).with_name("dpack"))


HEADER_FIELDS = [n for n, _ in C.BATCH_HEADER]


def with_sample_field(frame: str, i: int, field: str, data: object) -> str:
    """``frame`` with sample ``i``'s ``field`` set to ``data`` (the JSON ``data`` of its node)."""
    j = json.loads(frame)
    j["data"][2]["data"][1]["data"][1]["data"][i]["data"][SAMPLE_FIELDS.index(field)]["data"] = data
    return json.dumps(j)


def with_header_field(frame: str, field: str, data: object) -> str:
    j = json.loads(frame)
    j["data"][2]["data"][1]["data"][0]["data"][HEADER_FIELDS.index(field)]["data"] = data
    return json.dumps(j)


# Values Zeek's JSON could carry that Python cannot turn into a date, a port or a plain address.
BAD_SAMPLE_VALUES = [
    ("ts", "9999-12-31T23:59:59.9996"),  # rounds to the year 10000 when written back as milliseconds
    ("ts", "0001-01-01T00:30:00+01:00"),  # the year 0 in UTC
    ("ready", "9999-12-31T23:59:59.9999"),
    ("orig_p", "\u00b2/tcp"),  # a superscript two: str.isdigit() says yes, int() says no
    ("resp_p", "80/\u0074cp\n"),
    ("orig_h", "fe80::1%eth0"),  # IPv6 with a scope id: ipaddress takes it, a Suricata rule cannot
    ("resp_h", "192.0.2.1%1"),
]


@pytest.mark.parametrize(("field", "value"), BAD_SAMPLE_VALUES)
def test_the_codec_skips_a_sample_with_a_value_nothing_downstream_can_use(sample_recs, field, value):
    frame = with_sample_field(samples_frame(sample_recs[:3], time.time()), 1, field, value)
    batch = parse_samples(decode_message(frame))
    assert len(batch.samples) == 2 and len(batch.skipped) == 1, batch.skipped


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59.9996", "0001-01-01T00:30:00+01:00"])
def test_the_codec_refuses_a_header_time_outside_the_calendar(sample_recs, value):
    from dpack.errors import CodecError

    frame = with_header_field(samples_frame(sample_recs[:3], time.time()), "sent", value)
    with pytest.raises(CodecError):
        parse_samples(decode_message(frame))


@IN_PROCESS_AND_WORKERS
def test_one_bad_value_per_batch_never_stops_serve_or_its_other_samples(start, peer, sample_recs, workers):
    """Year 10000, year 0, a non-ASCII port digit, a scoped address: each in one sample of a batch of 5,
    then a header time outside the calendar. Every other sample gets its verdict; the bad ones are counted."""
    run = start(workers=workers, watch=False)
    recs, sent = sample_recs[:5], 0
    for k, (field, value) in enumerate(BAD_SAMPLE_VALUES):
        peer.send(with_sample_field(samples_frame(recs, time.time()), k % 5, field, value))
        sent += 4
    peer.send(with_header_field(samples_frame(recs, time.time()), "sent", "9999-12-31T23:59:59.9996"))
    peer.send(samples_frame(sample_recs[5:15], time.time()))
    sent += 10
    wait_for(lambda: len(peer.verdicts()) == sent, what="verdicts of the well-formed samples")
    wait_for(lambda: run.m["samples_skipped"] == len(BAD_SAMPLE_VALUES), what="skips counted")
    # a worker's counters reach the parent after its verdicts, and the malformed header's after the skips
    wait_for(lambda: run.m["messages_malformed"] >= 1, what="the malformed header counted")
    assert run.m["messages_malformed"] == 1
    assert run.thread.is_alive() and peer.connected.is_set() and run.m["reconnects"] == 1
    if workers:
        assert run.m["worker_restarts"] == 0


def test_node_names_and_peer_texts_reach_the_log_on_one_escaped_line(start, peer, sample_recs, caplog):
    run = start(watch=False)
    evil = "zeek\nINJECTED dpack: ERROR: fake line\x1b[2J"
    with caplog.at_level(logging.INFO, logger="dpack"):
        peer.send(samples_frame(sample_recs[:2], time.time(), node=evil, version=2))
        peer.send(samples_frame(sample_recs[:2], time.time(), node=evil, policy="first\nX"))
        peer.send(json.dumps({"type": "error", "code": "x\ny", "context": evil}))
        wait_for(lambda: run.m["batches_refused"] == 1 and run.m["zeek_errors"] == 1, what="refusals")
        wait_for(lambda: run.m["messages_malformed"] == 1, what="the header with a two-line policy")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "INJECTED" in text and "\nINJECTED" not in text and "\x1b" not in text


def test_refusals_from_ever_new_node_names_stay_rate_limited(start, peer, sample_recs, caplog):
    run = start(watch=False)
    with caplog.at_level(logging.ERROR, logger="dpack"):
        for i in range(300):
            peer.send(samples_frame(sample_recs[:1], time.time(), node=f"node-{i}", version=2))
        wait_for(lambda: run.m["batches_refused"] == 300, what="all refused")
    refusal_lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusal_lines) <= 2, len(refusal_lines)


def test_a_burst_with_a_keepalive_timeout_loses_no_accepted_flow(tmp_path, peer, model_copy, sample_recs):
    """200,000 flows back to back into 2 workers while Zeek stops reading (so the keepalive ping times out
    and the link drops mid-burst): serve stays up, reconnects, and every flow is scored or counted."""
    cfg = make_cfg(tmp_path, peer, model_copy, workers=2, watch=False)
    cfg.zeek.keepalive = 0.5
    run = Running(cfg)
    try:
        assert peer.connected.wait(10)
        size, frames, sent = 4096, [], 0
        while sent < 200_000:
            batch = [dict(r, uid=f"C{sent + i:010d}b") for i, r in enumerate((sample_recs * 4)[:size])]
            frames.append(samples_frame(batch, time.time()))
            sent += size
        peer.pause_reading(True)
        peer.send_all(frames)
        wait_for(lambda: run.m["reconnects"] >= 2, timeout=60, what="keepalive timeout and reconnect")
        peer.pause_reading(False)
        m = run.m
        # What reached dpack (frames in the socket when the link dropped are lost on the wire, as they
        # would be from Zeek): every flow of every message received is scored or counted as dropped.
        wait_for(
            lambda: m["flows_received"] + m["flows_dropped"] == m["messages_received"] * size > 0,
            timeout=120,
            what="every flow received accounted",
        )
        wait_for(lambda: m["flows_scored"] == m["flows_received"], timeout=120, what="all accepted scored")
        assert run.thread.is_alive() and m["worker_restarts"] == 0
        assert m["verdicts_sent"] + m["verdicts_dropped"] == m["flows_scored"]
    finally:
        run.stop()


def _config_file(tmp_path, peer, **scoring):
    path = tmp_path / "dpack.yaml"
    body = {
        "model": str(DEFAULT_MODEL),
        "zeek": {"url": peer.url, "reconnect_max": 0.5},
        "scoring": {"top_k": 3, **scoring},
        "serve": {"alerts": "", "metrics_port": 0},
    }
    tmp = path.with_suffix(".new")
    tmp.write_text(json.dumps(body))  # JSON is YAML
    tmp.replace(path)
    return path


def test_one_config_edit_reloads_once_and_a_bad_one_is_refused_once(tmp_path, peer):
    path = _config_file(tmp_path, peer)
    run = Running(load_config(str(path)))
    try:
        assert peer.connected.wait(10)
        _config_file(tmp_path, peer, top_k=5)
        wait_for(lambda: run.service.cfg.scoring.top_k == 5, what="the edit applied")
        time.sleep(2.0)  # a reload loop would reload ~3 times a second
        assert run.m["config_reloads"] == 1
        path.write_text("scoring: {top_k: 500}\n")
        wait_for(lambda: run.m["config_reload_failures"] == 1, what="the bad edit refused")
        time.sleep(2.0)
        assert run.m["config_reload_failures"] == 1 and run.m["config_reloads"] == 1
        assert run.service.cfg.scoring.top_k == 5  # still the last good one
    finally:
        run.stop()


@pytest.mark.parametrize("tick", [0, -1, "abc", float("nan")])
def test_a_rules_tick_that_would_spin_or_crash_is_refused_at_start(tmp_path, tick):
    with pytest.raises(ConfigError, match="rules.tick"):
        load_config(None, env={}, overrides={"rules": {"file": str(tmp_path / "r.rules"), "tick": tick}})


def test_dpack_rules_remove_while_serve_runs_is_not_undone(tmp_path, peer, model_copy, sample_recs):
    """The CLI and a running serve share the rule state through its lock: a removal made while serve runs
    stays removed when serve writes next, and the removed source's old flows no longer count."""
    rules = tmp_path / "dpack.rules"
    cfg = make_cfg(tmp_path, peer, model_copy)
    cfg.rules.update({"file": str(rules), "tick": 0.2, "threshold_flows": 5})
    run = Running(cfg)
    try:
        assert peer.connected.wait(10)
        send_batches(peer, sample_recs)

        def sources():
            text = rules.read_text() if rules.exists() else ""
            return {Rule.parse(ln).src for ln in text.splitlines() if ln and not ln.startswith("#")}

        wait_for(lambda: len(sources()) == 5, what="rules for the five attackers")
        r = subprocess.run(
            [dpack_exe(), "rules", "--file", str(rules), "remove", "10.201.66.11"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert "10.201.66.11" not in sources()
        # serve writes again for a new source's flows (an attacker re-addressed); the removed one stays out
        writes = run.service.rules_worker.counts["rules_writes"]
        attack = [x for x in sample_recs if x["orig_h"] == "10.201.66.12"]
        again = [dict(x, uid=x["uid"] + "r", orig_h="10.201.66.99") for x in attack]
        send_batches(peer, again)
        wait_for(lambda: run.service.rules_worker.counts["rules_writes"] > writes, what="serve's next write")
        assert sources() == {"10.201.66.12", "10.201.66.21", "10.201.66.31", "10.201.66.41", "10.201.66.99"}
    finally:
        run.stop()


@IN_PROCESS_AND_WORKERS
def test_a_model_that_would_flag_nothing_is_refused_on_hot_swap(
    start, peer, model_copy, sample_recs, workers
):
    import os

    import torch

    run = start(workers=workers)
    old_name = run.service.model.name
    blob = torch.load(DEFAULT_MODEL, weights_only=True)
    blob["threshold"] = float("nan")
    fresh = model_copy.with_suffix(".new")
    torch.save(blob, fresh)
    os.replace(fresh, model_copy)
    wait_for(lambda: run.m["model_reload_failures"] == 1, what="refusal of the NaN-threshold model")
    peer.send(samples_frame(sample_recs[:50], time.time()))
    wait_for(lambda: len(peer.verdicts()) == 50, what="verdicts with the old model")
    assert {v[8] for v in peer.verdicts()} == {old_name}
    time.sleep(1.5)  # a watcher that retried the same bad file would count again
    assert run.m["model_reload_failures"] == 1 and run.m["model_reloads"] == 0


@IN_PROCESS_AND_WORKERS
def test_a_batch_over_the_frame_cap_counts_its_flows_as_dropped(start, peer, sample_recs, workers):
    import base64
    import copy

    from dpack.zeek.wire import MAX_FRAME_TEXT

    run = start(workers=workers)
    big = base64.b64encode(bytes(range(256)) * 6).decode()  # 1536 bytes: under the contract's 1600
    recs = []
    for i in range(1200):
        r = copy.deepcopy(sample_recs[i % len(sample_recs)])
        r["pkts"] = [big] * len(r["pkts"])
        recs.append(r)
    frame = samples_frame(recs, time.time())
    assert len(frame) > MAX_FRAME_TEXT  # what an older Zeek script could publish in one batch
    peer.send(frame)
    peer.send(samples_frame(sample_recs[:20], time.time()))
    wait_for(lambda: len(peer.verdicts()) == 20, what="verdicts of the next batch")
    wait_for(lambda: run.m["flows_dropped"] == 1200, what="the oversized batch counted as dropped")
    assert run.m["frames_too_large"] == 1 and run.m["messages_malformed"] == 0
    assert run.m["reconnects"] == 1  # the link stayed up


def test_serve_stops_with_a_clear_line_when_its_rule_writer_is_gone(tmp_path, peer, model_copy, caplog):
    """What the rule writer cannot survive (here: its thread ended, as a fault injected from outside)
    stops serve with one critical line and a failure status, instead of serving with no rules written."""
    cfg = make_cfg(tmp_path, peer, model_copy)
    cfg.rules.update({"file": str(tmp_path / "dpack.rules"), "tick": 0.2})
    run = Running(cfg)
    assert peer.connected.wait(10)
    assert run.service.health() == ""
    with caplog.at_level(logging.CRITICAL, logger="dpack"):
        run.service.rules_worker.q.put(None)  # the thread's own stop signal: it ends, serve did not ask
        run.thread.join(30)
    assert not run.thread.is_alive() and run.error is None
    assert "rule writer stopped" in run.service.failure
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(lines) == 1 and "restart dpack serve" in lines[0]

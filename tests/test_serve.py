"""``dpack serve`` end to end against a WebSocket peer on 127.0.0.1 that sends exactly what the Zeek
scripts send (tests/zeekpeer.py), plus faults: disconnects, hostile messages, floods, bad models, SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DEFAULT_MODEL, SAMPLE, offline_verdicts
from servekit import Running, free_port, make_cfg, metrics_text, send_batches, wait_for
from zeekpeer import ZeekPeer, connections_from_pcap, samples_frame

from dpack.config import load_config
from dpack.prefix.modelfile import load_model
from dpack.records.scorer import RecordScorer
from dpack.sinks.rules import Rule
from dpack.zeek import contract as C
from dpack.zeek.codec import parse_connections
from dpack.zeek.wire import decode_message

WIRE = Path(__file__).resolve().parent / "zeek-wire"  # recorded from Zeek 8.0.10 (see its README)
# The tests of what Zeek sees, run with scoring in the serving process and with 2 scoring workers.
IN_PROCESS_AND_WORKERS = pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])


@IN_PROCESS_AND_WORKERS
def test_end_to_end_verdicts_alerts_and_counters(tmp_path, start, peer, sample_recs, workers):
    run = start(workers=workers)
    cfg = run.cfg
    assert peer.subscriptions[-1] == ["dpack/samples"]
    send_batches(peer, sample_recs)
    wait_for(lambda: len(peer.verdicts()) >= len(sample_recs), what="all verdicts")
    time.sleep(0.2)
    verdicts = peer.verdicts()
    assert len(verdicts) == len(sample_recs) == run.m["flows_scored"]
    assert peer.errors_sent == 0  # Zeek accepted every verdict event
    names = [n for n, _ in C.VERDICT]
    by_uid = {v[0]: dict(zip(names, v, strict=True)) for v in verdicts}
    assert set(by_uid) == {r["uid"] for r in sample_recs}
    # the same flows scored offline from the pcap get the same scores and verdicts
    offline = {
        (round(v.ts, 6), v.src, v.sport, v.dst, v.dport): v
        for v in offline_verdicts(load_model(DEFAULT_MODEL))
    }
    live_flagged = 0
    for r in sample_recs:
        v = by_uid[r["uid"]]
        o = offline[(round(r["ts"], 6), r["orig_h"], r["orig_p"].number, r["resp_h"], r["resp_p"].number)]
        assert v["score"] == pytest.approx(o.score, rel=1e-5, abs=1e-8) and v["anomalous"] == o.anomalous
        assert v["explanation"] == ",".join(o.explanation)
        live_flagged += v["anomalous"]
    assert live_flagged == run.m["flows_flagged"] > 50
    # SIEM feed: one ECS alert per anomalous verdict
    alerts = [json.loads(line) for line in open(tmp_path / "alerts.jsonl")]
    assert len(alerts) == live_flagged
    a = alerts[0]
    assert a["event"]["kind"] == "alert" and a["event"]["category"] == ["network", "intrusion_detection"]
    assert a["rule"]["name"] == "DPack::Anomalous_Flow" and 50 <= a["event"]["risk_score"] <= 100
    assert {"ip", "port"} <= set(a["source"]) and a["network"]["community_id"].startswith("1:")
    assert a["zeek"]["uid"] in by_uid and a["network"]["transport"] in ("tcp", "udp", "icmp")
    # Prometheus endpoint
    text = metrics_text(cfg)
    assert f"dpack_flows_scored_total {len(sample_recs)}" in text
    assert f"dpack_flows_flagged_total {live_flagged}" in text and "dpack_connected 1" in text
    assert 'dpack_verdict_latency_seconds{quantile="0.99"}' in text


@IN_PROCESS_AND_WORKERS
def test_prefix_mismatch_is_refused_with_one_line_on_both_sides(start, peer, sample_recs, workers):
    run = start(workers=workers)
    for _ in range(3):
        peer.send(samples_frame(sample_recs[:5], time.time(), packets=2, policy="first"))
    wait_for(lambda: run.m["batches_refused"] == 3, what="refusals")
    wait_for(lambda: len(peer.refusals()) == 1, what="refusal event")
    (reason,) = peer.refusals()
    assert "expects packets=3 bytes=80 policy=payload max_wait=5s" in reason
    assert "sends packets=2 bytes=80 policy=first" in reason
    peer.send(samples_frame(sample_recs[:5], time.time(), version=C.CONTRACT_VERSION + 1))
    wait_for(lambda: len(peer.refusals()) == 2, what="version refusal")
    assert f"contract version {C.CONTRACT_VERSION + 1}" in peer.refusals()[1]
    assert peer.verdicts() == [] and run.m["flows_scored"] == 0


@IN_PROCESS_AND_WORKERS
def test_malformed_and_hostile_messages_are_counted_not_fatal(start, peer, sample_recs, workers):
    run = start(workers=workers)
    # Zeek's raw-bytes frame (invalid UTF-8), as recorded
    fixture = WIRE / "frames-from-zeek.jsonl"
    raw = [bytes.fromhex(json.loads(fixture.read_text().splitlines()[2])["invalid_utf8_hex"])]
    good = json.loads(samples_frame(sample_recs[:3], time.time()))
    wrong_event = json.loads(json.dumps(good))
    wrong_event["data"][2]["data"][0]["data"] = "DPack::something_else"
    wrong_arity = json.loads(json.dumps(good))
    wrong_arity["data"][2]["data"][1]["data"].append({"@data-type": "count", "data": 1})
    bad_b64 = json.loads(json.dumps(good))
    pkts = [n for n, _ in C.SAMPLE].index("pkts")
    bad_b64["data"][2]["data"][1]["data"][1]["data"][1]["data"][pkts]["data"][0]["data"] = "!!!"
    hostile = raw + [
        "{not json",
        "[]",
        json.dumps(wrong_event),
        json.dumps(wrong_arity),
        '{"type":"data-message","topic":"x","@data-type":"vector","data":' + "[" * 5000 + "]" * 5000 + "}",
        json.dumps({"type": "error", "code": "deserialization_failed", "context": "x"}),
    ]
    for h in hostile:
        peer.send(h)
    peer.send(json.dumps(bad_b64))
    peer.send(samples_frame(sample_recs[3:10], time.time()))
    wait_for(lambda: len(peer.verdicts()) == 2 + 7, what="verdicts after the junk")
    # a worker's counters reach the serving process after its verdicts do: wait for them as well
    wait_for(
        lambda: run.m["samples_skipped"] >= 1 and run.m["messages_malformed"] >= 5 + len(raw), what="counters"
    )
    assert (
        run.m["messages_malformed"] == 5 + len(raw)
        and run.m["zeek_errors"] == 1
        and run.m["samples_skipped"] == 1
    )
    assert peer.connected.is_set()  # still the first connection
    assert run.m["reconnects"] == 1


@IN_PROCESS_AND_WORKERS
def test_reconnects_when_zeek_restarts(start, peer, sample_recs, workers):
    run = start(workers=workers)
    peer.send(samples_frame(sample_recs[:10], time.time()))
    wait_for(lambda: len(peer.verdicts()) == 10, what="first verdicts")
    peer.drop_clients()
    wait_for(lambda: run.m["reconnects"] == 2 and peer.connected.is_set(), what="reconnect")
    peer.send(samples_frame(sample_recs[10:30], time.time()))
    wait_for(lambda: len(peer.verdicts()) == 30, what="verdicts after reconnect")


@IN_PROCESS_AND_WORKERS
def test_verdicts_made_while_zeek_is_away_are_delivered_after_it_returns(
    tmp_path, model_copy, sample_recs, workers
):
    port = free_port()
    peer = ZeekPeer().start(port)
    cfg = make_cfg(tmp_path, peer, model_copy, max_delay_ms=300.0, workers=workers)
    run = Running(cfg)
    try:
        assert peer.connected.wait(10)
        peer.send(samples_frame(sample_recs[:20], time.time()))
        peer.stop()  # Zeek goes away before the 300 ms batch deadline
        wait_for(lambda: run.m["flows_scored"] == 20, what="scoring while away")
        assert run.service.metrics.outbox_depth == 20
        peer2 = ZeekPeer().start(port)
        try:
            wait_for(lambda: len(peer2.verdicts()) == 20, what="delivery after return")
            assert run.m["verdicts_dropped"] == 0
        finally:
            run.stop()
            peer2.stop()
    except BaseException:
        if run.thread.is_alive():
            run.stop()
        raise


def test_flood_beyond_capacity_drops_are_counted_and_memory_bounded(start, peer, sample_recs):
    def slow(service):  # fault injection: a scorer that needs 50 ms per call
        real = service.scoring.pipeline.scorer.verdicts

        def verdicts(samples):
            time.sleep(0.05)
            return real(samples)

        service.scoring.pipeline.scorer.verdicts = verdicts

    run = start(scorer_wrap=slow, queue_size=200, batch_size=64, watch=False)
    depth = []
    recs = (sample_recs * 3)[:3000]
    for i in range(0, len(recs), 100):
        peer.send(samples_frame(recs[i : i + 100], time.time()))
        depth.append(run.service.metrics.queue_depth)
    wait_for(lambda: run.m["flows_received"] + run.m["flows_dropped"] == 3000, what="all flows accounted")
    wait_for(
        lambda: len(peer.verdicts()) == run.m["flows_received"], timeout=60, what="verdicts for accepted"
    )
    assert run.m["flows_dropped"] > 0
    assert max(depth) <= 200
    assert f"dpack_flows_dropped_total {run.m['flows_dropped']}" in metrics_text(run.cfg)


def _worker_pids(run):
    return [w.proc.pid for w in run.service.scoring.workers]


def test_stalled_workers_flood_is_dropped_at_the_parent_counted_and_bounded(start, peer, sample_recs):
    """Fault injection with real processes: both scoring workers are stopped (SIGSTOP) while Zeek floods.
    The parent keeps reading Zeek, holds at most its backlog limit per worker, drops the rest counted in
    flows; once the workers run again every accepted flow gets its verdict."""
    run = start(workers=2, queue_size=200, batch_size=64, watch=False)
    pool = run.service.scoring
    limit = pool.backlog_limit
    pids = _worker_pids(run)
    buffered = []
    recs = (sample_recs * 3)[:3000]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        for i in range(0, len(recs), 100):
            peer.send(samples_frame(recs[i : i + 100], time.time()))
            buffered.append(max(w.writer.transport.get_write_buffer_size() for w in pool.workers))
        wait_for(lambda: run.m["messages_received"] == 30, what="the parent read every message")
        dropped_at_parent = run.m["flows_dropped"]
        assert dropped_at_parent > 0 and dropped_at_parent % 100 == 0  # whole messages, counted in flows
        assert max(buffered) <= limit + 200_000  # a message may land on top of a backlog just under it
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: run.m["flows_received"] + run.m["flows_dropped"] == 3000, what="all flows accounted")
    wait_for(lambda: len(peer.verdicts()) == run.m["flows_received"] > 0, timeout=60, what="verdicts")
    assert run.m["worker_restarts"] == 0
    assert f"dpack_flows_dropped_total {run.m['flows_dropped']}" in metrics_text(run.cfg)


def test_a_killed_worker_is_restarted_and_its_loss_counted(start, peer, sample_recs):
    run = start(workers=2, watch=False)
    send_batches(peer, sample_recs[:40], size=20)  # one message to each worker
    wait_for(lambda: len(peer.verdicts()) == 40, what="first verdicts")
    victim = run.service.scoring.workers[0].proc
    os.kill(victim.pid, signal.SIGKILL)
    wait_for(lambda: run.m["worker_restarts"] == 1, what="restart")
    wait_for(lambda: run.service.scoring.workers[0].proc is not victim, what="a new worker")
    assert run.m["flows_dropped"] == 0  # it held nothing when it died
    send_batches(peer, sample_recs[40:120], size=20)  # both workers again, the new one included
    wait_for(lambda: len(peer.verdicts()) == 120, what="verdicts after the restart")
    assert {v[0] for v in peer.verdicts()} == {r["uid"] for r in sample_recs[:120]}
    assert peer.connected.is_set() and run.m["reconnects"] == 1


def test_idle_workers_share_a_batch_and_count_it_once(start, peer, sample_recs):
    """With both workers idle, a batch goes to each with a part number and each scores its share: every
    flow gets exactly one verdict, and a refused or malformed batch is counted once, not once per part."""
    run = start(workers=2, watch=False)
    pool = run.service.scoring
    pool.max_parts = 2  # on by default only with more cores than 2 (one stays for the link)
    wait_for(lambda: all(w.idle for w in pool.workers), what="idle workers")
    peer.send(samples_frame(sample_recs[:64], time.time()))
    wait_for(lambda: len(peer.verdicts()) == 64, what="verdicts of the shared batch")
    time.sleep(0.2)
    assert sorted(v[0] for v in peer.verdicts()) == sorted(r["uid"] for r in sample_recs[:64])
    assert [w.sent for w in pool.workers] == [1, 1] and run.m["flows_scored"] == 64
    assert run.m["flows_received"] == 64 and run.m["messages_received"] == 1
    wait_for(lambda: all(w.idle for w in pool.workers), what="idle again")
    peer.send(samples_frame(sample_recs[:64], time.time(), packets=2))  # refused: the model reads 3
    wait_for(lambda: len(peer.refusals()) == 1, what="refusal")
    wait_for(lambda: all(w.idle for w in pool.workers), what="idle again")
    peer.send("[" * 20000)  # big and malformed
    wait_for(lambda: run.m["messages_malformed"] == 1, what="malformed counted")
    wait_for(lambda: all(w.idle for w in pool.workers), what="idle at the end")
    assert [w.sent for w in pool.workers] == [3, 3]  # each of the three went to both
    assert run.m["batches_refused"] == 1 and run.m["messages_malformed"] == 1
    assert run.m["flows_scored"] == 64 and len(peer.refusals()) == 1


def test_what_the_parent_reads_of_a_message_it_does_not_parse(sample_recs, conn_recs):
    """The serving process only peeks at messages: which worker takes connection summaries, and how many
    entries a message it drops held; anything else (junk, a Broker link's CodecError) is no batch."""
    from dpack.errors import CodecError
    from dpack.serve.workers import count_dropped, is_connections

    samples = samples_frame(sample_recs[:5], time.time())
    conns = samples_frame(conn_recs[:3], time.time(), event=C.CONNECTIONS_EVENT)
    assert not is_connections(samples) and is_connections(conns) and is_connections(conns.encode())
    assert count_dropped(samples) == ("flows_dropped", 5) == count_dropped(samples.encode())
    assert count_dropped(json.loads(samples)) == ("flows_dropped", 5)
    assert count_dropped(conns) == ("connections_dropped", 3)
    assert count_dropped(decode_message(conns)) == ("connections_dropped", 3)
    for junk in ("{not json", b"\xff\xfe", "[]", CodecError("bad value"), None):
        assert not is_connections(junk) and count_dropped(junk) == ("flows_dropped", 0)


def test_a_backlog_is_taken_in_between_batches(start, peer, sample_recs):
    """Batches are scored on the event loop; after each, the receiving loop takes in everything that
    arrived meanwhile, so a backlog reaches our queue (fuller batches) instead of waiting in the socket
    one message per batch."""
    sizes: list[int] = []

    def record(service):
        real = service.scoring.pipeline.scorer.verdicts

        def verdicts(samples):
            sizes.append(len(samples))
            time.sleep(0.02)  # slow enough that the burst piles up behind the first batch
            return real(samples)

        service.scoring.pipeline.scorer.verdicts = verdicts

    run = start(scorer_wrap=record, batch_size=64, max_delay_ms=0, watch=False)
    for i in range(0, 300, 30):
        peer.send(samples_frame(sample_recs[i : i + 30], time.time()))
    wait_for(lambda: len(peer.verdicts()) == 300, what="verdicts of the burst")
    assert run.m["flows_scored"] == 300
    assert max(sizes) == 64 and len(sizes) <= 7, sizes  # 300 flows in full batches, not ten of 30


@IN_PROCESS_AND_WORKERS
def test_model_replaced_while_serving(start, peer, model_copy, sample_recs, workers):
    run = start(workers=workers)
    old_name = run.service.model.name
    # a corrupt file lands on the model path: refused, the old model keeps serving
    junk = model_copy.with_suffix(".tmp")
    junk.write_bytes(b"this is not a model")
    os.replace(junk, model_copy)
    wait_for(lambda: run.m["model_reload_failures"] >= 1, what="refusal of the corrupt model")
    peer.send(samples_frame(sample_recs[:10], time.time()))
    wait_for(lambda: len(peer.verdicts()) == 10, what="verdicts with the old model")
    assert {v[8] for v in peer.verdicts()} == {old_name}
    # a good new model (same prefix, another threshold) is swapped in without a reconnect; without the
    # shipped host-context stage, which was fitted for the old threshold (a stage for another one is refused)
    blob = torch.load(DEFAULT_MODEL, weights_only=True)
    blob["threshold"] = 1e9
    blob.pop("context", None)
    fresh = model_copy.with_suffix(".new")
    torch.save(blob, fresh)
    os.replace(fresh, model_copy)
    wait_for(lambda: run.m["model_reloads"] == 1, what="reload")
    peer.send(samples_frame(sample_recs[10:20], time.time()))
    wait_for(lambda: len(peer.verdicts()) == 20, what="verdicts with the new model")
    new = peer.verdicts()[10:]
    assert {v[8] for v in new} == {run.service.model.name} != {old_name}
    assert not any(v[7] for v in new)  # threshold 1e9: nothing anomalous
    assert run.m["reconnects"] == 1


@IN_PROCESS_AND_WORKERS
def test_config_changed_while_serving_applies_its_scoring_settings(tmp_path, peer, sample_recs, workers):
    cfg_file = tmp_path / "dpack.yaml"

    def write(explain):
        new = cfg_file.with_suffix(".new")
        new.write_text(
            f"model: {DEFAULT_MODEL}\nzeek: {{url: '{peer.url}', reconnect_max: 0.5}}\n"
            f"scoring: {{explain: {explain}}}\nserve: {{alerts: '', metrics_port: 0, workers: {workers}}}\n"
        )
        os.replace(new, cfg_file)

    write("anomalous")
    run = Running(load_config(str(cfg_file)))
    try:
        assert peer.connected.wait(10)
        at = [n for n, _ in C.VERDICT].index("explanation")
        n = len(sample_recs)
        send_batches(peer, sample_recs)
        wait_for(lambda: len(peer.verdicts()) == n, what="verdicts")
        flagged = run.m["flows_flagged"]
        assert sum(bool(v[at]) for v in peer.verdicts()) == flagged > 0
        write("none")
        wait_for(lambda: run.service.cfg.scoring.explain == "none", what="config reload")
        send_batches(peer, [dict(r, uid=r["uid"] + "b") for r in sample_recs])  # after the workers got it
        wait_for(lambda: len(peer.verdicts()) == 2 * n, what="verdicts after the reload")
        # the same flows again: a second pass through their hosts' histories for the host-context stage
        # (not the same decisions), and none explained, the stage's flagged flows included
        again = peer.verdicts()[n:]
        det = [n for n, _ in C.VERDICT].index("detector")
        assert run.m["flows_flagged"] > flagged and any(v[det] == "context" and v[7] for v in again)
        assert not any(v[at] for v in again)
        assert run.m["config_reload_failures"] == 0 and run.m["reconnects"] == 1
    finally:
        run.stop()


@IN_PROCESS_AND_WORKERS
def test_rules_written_while_serving_and_apply_failure_reported(
    tmp_path, peer, model_copy, sample_recs, workers
):
    cfg = make_cfg(tmp_path, peer, model_copy, workers=workers)
    cfg.rules.update(
        {
            "file": str(tmp_path / "dpack.rules"),
            "socket": str(tmp_path / "no-suricata.sock"),
            "mode": "drop",
            "tick": 0.2,
        }
    )
    run = Running(cfg)
    try:
        assert peer.connected.wait(10)
        send_batches(peer, sample_recs)

        def sources():
            if not (tmp_path / "dpack.rules").exists():
                return set()
            text = (tmp_path / "dpack.rules").read_text()
            return {Rule.parse(ln).src for ln in text.splitlines() if not ln.startswith("#")}

        wait_for(lambda: len(sources()) == 5, what="rules for the five attackers")
        wait_for(lambda: run.service.rules_worker.counts["rules_apply_failures"] >= 2, what="apply retried")
        assert sources() == {"10.201.66.11", "10.201.66.12", "10.201.66.21", "10.201.66.31", "10.201.66.41"}
        assert "dpack_rules_apply_failures_total" in metrics_text(cfg)
    finally:
        run.stop()


@IN_PROCESS_AND_WORKERS
def test_sigterm_scores_and_sends_what_is_queued(tmp_path, peer, sample_recs, workers):
    cfg_file = tmp_path / "dpack.yaml"
    cfg_file.write_text(
        f"model: {DEFAULT_MODEL}\n"
        f"zeek: {{url: '{peer.url}', reconnect_max: 0.5}}\n"
        f"serve: {{max_delay_ms: 1000, batch_size: 4096, workers: {workers}, alerts: '{tmp_path / 'a.jsonl'}', metrics_port: 0}}\n"
    )
    exe = shutil.which("dpack") or str(Path(sys.executable).with_name("dpack"))
    proc = subprocess.Popen([exe, "serve", "--config", str(cfg_file)], stderr=subprocess.PIPE, text=True)
    try:
        assert peer.connected.wait(30)
        send_batches(peer, sample_recs[:200])
        time.sleep(0.1)  # queued, waiting for the 1 s batch deadline
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert len(peer.verdicts()) == 200
        err = proc.stderr.read()
        assert "stopped: scored=200" in err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_refuses_bad_config_with_one_line(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("zeek: {url: 'http://example.invalid/'}\n")
    exe = shutil.which("dpack") or str(Path(sys.executable).with_name("dpack"))
    r = subprocess.run([exe, "serve", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "zeek.url" in r.stderr and r.stderr.count("\n") == 1


# --- connection summaries and the flow-record detectors ----------------------------------------------


@pytest.fixture(scope="module")
def conn_recs():
    return connections_from_pcap(str(SAMPLE))


def send_connections(peer, recs, size=64, **kw):
    for i in range(0, len(recs), size):
        peer.send(samples_frame(recs[i : i + size], time.time(), event=C.CONNECTIONS_EVENT, **kw))


@IN_PROCESS_AND_WORKERS
def test_connection_summaries_get_verdicts_categories_and_alerts(
    tmp_path, peer, model_copy, conn_recs, records_model_path, classifier_model_path, workers
):
    cfg = make_cfg(tmp_path, peer, model_copy, workers=workers)
    cfg.detectors.records_model = str(records_model_path)
    cfg.detectors.classifier_model = str(classifier_model_path)
    run = Running(cfg)
    try:
        assert peer.connected.wait(10)
        send_connections(peer, conn_recs)
        wait_for(lambda: len(peer.connection_verdicts()) == len(conn_recs), what="connection verdicts")
        assert peer.errors_sent == 0  # every message of ours is one Zeek accepts
        got = {v[0]: v for v in peer.connection_verdicts()}
        names = [n for n, _ in C.CONNECTION_VERDICT]
        # the same records scored offline (fresh segment tracker, time order) give the same verdicts
        offline = RecordScorer.load(str(records_model_path), str(classifier_model_path))
        records = parse_connections(
            decode_message(samples_frame(conn_recs, 0.0, event=C.CONNECTIONS_EVENT))
        ).records
        for r, v in zip(conn_recs, offline.verdicts(records), strict=True):
            live = dict(zip(names, got[r["uid"]], strict=True))
            assert live["detector"] == "records" and live["category"] == v.category
            assert live["score"] == pytest.approx(v.score, rel=1e-4) and live["anomalous"] == v.anomalous
        flagged = [dict(zip(names, v, strict=True)) for v in got.values() if v[names.index("anomalous")]]
        assert flagged and run.m["connections_flagged"] == len(flagged)
        assert {f["category"] for f in flagged} & {"hping_syn_flood", "nmap_syn", "nmap_connect"}
        alerts = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
        conn_alerts = [a for a in alerts if a["rule"]["name"] == "DPack::Anomalous_Connection"]
        assert len(conn_alerts) == len(flagged)
        assert all(a["rule"]["category"] == a["dpack"]["category"] != "" for a in conn_alerts)
        assert all(a["dpack"]["detector"] == "records" for a in conn_alerts)
        # malformed summaries are skipped and counted; the rest of their batch is scored
        bad = [
            dict(conn_recs[0], uid="Cbad1", duration=-5.0),
            dict(conn_recs[1], uid="Cbad2", history="S" * 300),
            dict(conn_recs[2], uid="Cgood"),
        ]
        send_connections(peer, bad)
        wait_for(lambda: any(v[0] == "Cgood" for v in peer.connection_verdicts()), what="good record")
        assert run.m["connections_skipped"] == 2
    finally:
        run.stop()


def test_connection_summaries_without_a_record_detector_are_counted(start, peer, conn_recs):
    run = start()
    send_connections(peer, conn_recs[:10])
    wait_for(lambda: run.m["connections_ignored"] == 10, what="ignored")
    send_connections(peer, conn_recs[:3], version=C.CONTRACT_VERSION + 1)
    wait_for(lambda: len(peer.refusals()) == 1, what="version refusal")
    assert not peer.connection_verdicts()

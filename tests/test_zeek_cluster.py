"""A real Zeek cluster on this machine: manager, proxy, two workers (and a logger) on Zeek 8's ZeroMQ
backend, started without zeekctl; each worker captures on its own veth half of the replayed sample
(dealt by flow, as a NIC spreads flows over workers); two ``dpack serve`` shards on the manager's
WebSocket listener (``tools/zeeklab.py run_cluster``, about a minute).

Checked: one verdict per connection and one notice per flagged flow, equal to ``dpack score``; both
shards busy; every flow of one originator scored by one shard (the workers route by originator, not
round-robin); the ZeroMQ drop counters of every node read and 0."""

from __future__ import annotations

import zeeklab
from conftest import SAMPLE


def test_cluster_routes_by_originator_and_notices_once(live_sensor, tmp_path):
    run = zeeklab.run_cluster(SAMPLE, tmp_path / "cluster")
    a = zeeklab.agreement(run, zeeklab.offline_verdicts([SAMPLE], tmp_path / "offline.jsonl"))
    print(a.summary())
    print("ZeroMQ drop counters:", run.drops)
    print("originators per shard:", [sorted(s) for s in run.shard_sources])
    assert (
        a.conns > 1000
        and a.verdicts == a.conns
        and a.conns_without_verdict == 0
        and a.conns_with_several == 0
    )
    assert a.same == a.matched == a.conns
    assert a.notices == a.live_flagged > 100  # once each, by the worker that saw the connection
    scored = [m["dpack_flows_scored_total"] for m in run.metrics]
    assert min(scored) > 0.2 * a.conns and sum(scored) == a.conns  # both shards busy, nothing twice
    assert all(run.shard_sources) and not run.shard_sources[0] & run.shard_sources[1]
    assert set(run.drops) == {"manager", "logger-1", "proxy-1", "worker-1", "worker-2"}
    for node, counters in run.drops.items():
        assert {"zeek_cluster_zeromq_xpub_drops_total", "zeek_cluster_zeromq_onloop_drops_total"} <= set(
            counters
        )
        assert all(v == 0 for v in counters.values()), (node, counters)
    assert all(m["dpack_flows_dropped_total"] == 0 for m in run.metrics)

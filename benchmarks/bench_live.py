"""The live path: ``dpack serve`` (its own process) fed over the WebSocket API on 127.0.0.1.

    python benchmarks/bench_live.py [--seconds 5] [--rate 5000] [--workers N]

A WebSocket peer in this process plays Zeek (``tests/zeekpeer.py``: the same messages the dpack Zeek
scripts send) with the flows of lab-dev benign-val + attack-dev (the shipped sample if lab-dev is absent).
``dpack serve`` runs with the shipped settings and ``serve.workers`` = ``--workers`` (default: one per
core). On a 2-core machine the peer, the serving process and its workers share the two cores. Before
each timed phase, the last 256 flows warm the scorer up in the timed phase's batch shape.

1. Sustained throughput: every flow sent as fast as the link takes it, in batches of 64 (Zeek's default
   ``DPack::batch_size``); flows/s = flows / time until the last verdict is back.
2. Latency at a fixed offered load, against a freshly started scorer: ``--rate`` flows/s, a batch every
   10 ms (Zeek's ``batch_interval``), for ``--seconds`` or until every flow was sent once (the scorer
   caches recent inputs: a flow sent twice would be a free repeat); latency = verdict back at the peer
   minus batch sent, p50/p99/max.
3. Offline ``score_capture`` on the same capture with as many processes, and the ratio live/offline.
Prints figures only.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from zeekpeer import ZeekPeer, samples_frame, samples_from_pcap  # noqa: E402

from dpack.config import usable_cores  # noqa: E402
from dpack.offline.score import score_capture  # noqa: E402
from dpack.prefix.modelfile import load_model  # noqa: E402
from dpack.prefix.scorer import Scorer  # noqa: E402

LAB = ROOT.parent / "shared" / "datasets" / "lab-dev"


def capture(tmp: Path) -> Path:
    parts = [LAB / "benign-val.pcap.gz", LAB / "attack-dev.pcap.gz"]
    if not all(p.exists() for p in parts):
        return ROOT / "samples" / "lab-sample.pcap.gz"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_score import merged

    return merged(parts, tmp / "mix.pcap")


METRICS_PORT = 19477


def scorer_latency() -> str:
    """The scorer's own view (receipt of a sample -> its verdict sent), from its metrics endpoint."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as r:
        lines = [
            ln for ln in r.read().decode().splitlines() if ln.startswith("dpack_verdict_latency_seconds{")
        ]
    parts = [(ln.split('"')[1], float(ln.split()[-1]) * 1e3) for ln in lines]
    return ", ".join(f"q{q}: {ms:.2f} ms" for q, ms in parts)


def start_serve(peer: ZeekPeer, tmp: Path, workers: int) -> subprocess.Popen[str]:
    cfg = tmp / "serve.yaml"
    # the shipped defaults (batch_size, max_delay_ms, queue_size), no SIEM feed, no file watch
    cfg.write_text(
        f"zeek: {{url: '{peer.url}'}}\nserve: {{alerts: '', metrics_port: {METRICS_PORT}, watch: false, "
        f"workers: {workers}}}\n"
    )
    exe = shutil.which("dpack") or str(Path(sys.executable).with_name("dpack"))
    proc = subprocess.Popen([exe, "serve", "--config", str(cfg)], stderr=subprocess.DEVNULL, text=True)
    if not peer.connected.wait(60):
        proc.kill()
        raise SystemExit("dpack serve did not connect")
    return proc


WARM = 256  # flows, the last of the capture: the timed phases do not send them


def warm_up(peer: ZeekPeer, recs: list[dict[str, object]], per_batch: int, tag: str) -> None:
    """The warm-up flows in batches of ``per_batch``, one every 10 ms, answered before the clock runs: a
    process's first model calls at a new batch size take up to tens of milliseconds (a one-off after a
    start, not a figure of the running scorer; without this the first batches measured 15 ms)."""
    uids = set()
    for i in range(0, len(recs), per_batch):
        batch = [dict(r, uid=f"{tag}x{i + j}") for j, r in enumerate(recs[i : i + per_batch])]
        uids |= {r["uid"] for r in batch}
        peer.send(samples_frame(batch, time.time()))
        time.sleep(0.01)
    end = time.monotonic() + 30
    while not uids <= peer.verdict_times().keys() and time.monotonic() < end:
        time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--capture", help="capture whose flows are sent (default: benign-val + attack-dev)")
    ap.add_argument(
        "--workers",
        type=int,
        default=usable_cores(),
        help="serve.workers (default: one per core; 0 = scoring in the serving process)",
    )
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cap = Path(a.capture) if a.capture else capture(tmp)
        recs = samples_from_pcap(str(cap))
        print(f"flows: {len(recs)} from {cap.name}; dpack serve with serve.workers: {a.workers}")
        peer = ZeekPeer(check_on_receipt=False).start()
        proc = start_serve(peer, tmp, a.workers)
        try:
            warm_up(peer, recs[-WARM:], 64, "W1")
            # 1. sustained
            timed = recs[:-WARM]
            frames = [samples_frame(timed[i : i + 64], time.time()) for i in range(0, len(timed), 64)]
            gc.collect()
            gc.freeze()  # see below
            t0 = time.perf_counter()
            for f in frames:
                peer.send(f)
            end = time.monotonic() + 120
            want = {r["uid"] for r in timed}
            while time.monotonic() < end:
                times = peer.verdict_times()
                if want <= times.keys():
                    break
                time.sleep(0.05)
            got = len(want & times.keys())
            dt = max(times[u] for u in want if u in times) - t0
            live = got / dt
            print(f"sustained: {got} verdicts in {dt:.2f} s = {live:,.0f} flows/s")
            # 2. latency at a fixed load (receive times are taken by the peer as each event arrives)
            # A fresh scorer, and every flow sent once: the scorer's cache of recent inputs must only
            # see the repeats the capture itself holds (the sustained run above already saw all flows).
            proc.terminate()
            proc.wait(30)
            end = time.monotonic() + 30
            while peer.connected.is_set() and time.monotonic() < end:
                time.sleep(0.01)
            proc = start_serve(peer, tmp, a.workers)
            per_batch = max(1, round(a.rate / 100))
            warm_up(peer, recs[-WARM:], per_batch, "W2")
            n_batches = min(int(a.seconds * 100), (len(recs) - WARM) // per_batch)
            chunks = [
                [dict(recs[(k * per_batch + j) % len(recs)], uid=f"L{k}x{j}") for j in range(per_batch)]
                for k in range(n_batches)
            ]
            prebuilt = [samples_frame(c, time.time()) for c in chunks]  # built before the clock runs
            # This process plays Zeek, which has no garbage collector: its own full collections over the
            # flows held here (measured: 90-110 ms pauses) must not land in the verdicts' receive times.
            gc.collect()
            gc.freeze()
            sys.setswitchinterval(0.0002)  # this process's threads must not delay the peer's receive times
            sent_at: dict[str, float] = {}
            t_start = time.perf_counter()
            for k in range(n_batches):
                target = t_start + k * 0.01
                # one sleep to the batch's time (polling every 0.5 ms cost this process ~10% of a core,
                # taken from the scorer on a 2-core machine; Linux oversleeps by ~0.1 ms at most)
                time.sleep(max(0.0, target - time.perf_counter()))
                now = time.perf_counter()
                for r in chunks[k]:
                    sent_at[r["uid"]] = now
                peer.send(prebuilt[k])
            # Reading the stored verdicts parses them in this process, which holds the GIL the peer needs
            # to time the last verdicts: wait for those first (measured: the last batches +6-8 ms).
            time.sleep(0.3)
            end = time.monotonic() + 30
            while time.monotonic() < end:
                recv_at = peer.verdict_times()
                if all(u in recv_at for u in sent_at):
                    break
                time.sleep(0.05)
            lat = np.array([recv_at[u] - sent_at[u] for u in sent_at if u in recv_at]) * 1e3
            print(
                f"latency at {per_batch * 100:,} flows/s offered ({len(lat)}/{len(sent_at)} answered): "
                f"p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms, max {lat.max():.2f} ms"
            )
            print(
                f"inside dpack serve (its last 20,000 flows, the warm-up's cold start included): {scorer_latency()}"
            )
        finally:
            proc.terminate()
            proc.wait(30)
            peer.stop()
        # 3. offline on the same capture
        if str(cap).endswith(".gz"):
            raw = tmp / "cap.pcap"
            raw.write_bytes(gzip.decompress(cap.read_bytes()))
            cap = raw
        scorer = Scorer(load_model(ROOT / "models" / "dpack-default.pt"))
        procs = max(1, a.workers)  # as many processes as the live scorer had
        t0 = time.perf_counter()
        run = score_capture(cap, scorer, workers=procs)
        off = run.flows / (time.perf_counter() - t0)
        print(
            f"offline dpack score ({procs} process(es)): {off:,.0f} flows/s; live/offline = {live / off:.2f}"
        )


if __name__ == "__main__":
    main()

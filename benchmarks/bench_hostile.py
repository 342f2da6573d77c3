"""Bounded state under hostile load.

    python benchmarks/bench_hostile.py [--flows 1000000] [--workers 0] [--rule-flows 40000]

1. A flood of distinct (spoofed) source addresses through ``dpack serve`` (its own process, rules on,
   scope ``source``, the shipped policy): ``--flows`` samples, each from a new source, with the packets of
   flows the shipped model flags (a spoofed scan or flood looks like this), sent as fast as the link
   takes them. The serving process's resident memory (and its workers', summed) is sampled as the flood
   goes on: bounded means it levels off while the number of sources keeps growing.
2. The rule book writing ``--rule-flows`` flagged flows with ``scope: flow`` (one entry per 5-tuple) and
   ``max_entries`` raised to hold them all: time to account them and to write (and, if Suricata is
   installed, check with ``suricata -T``) the file once.
Prints figures only.
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from zeekpeer import ZeekPeer, samples_frame, samples_from_pcap  # noqa: E402

from dpack.prefix.modelfile import load_model  # noqa: E402
from dpack.prefix.scorer import Scorer  # noqa: E402

MODEL = ROOT / "models" / "dpack-default.pt"
SAMPLE = ROOT / "samples" / "lab-sample.pcap.gz"


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its children (the scoring workers), KiB."""
    total = 0
    pids = [pid]
    try:
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(k) for k in kids]
    except FileNotFoundError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        out = {}
        for ln in r.read().decode().splitlines():
            if ln.startswith("dpack_") and "{" not in ln:
                k, v = ln.split()
                out[k[len("dpack_") :].removesuffix("_total")] = float(v)
        return out


def flagged_recs() -> list[dict[str, object]]:
    """Samples of the shipped sample's flows that the shipped model flags."""
    from dpack.zeek.codec import parse_samples
    from dpack.zeek.wire import decode_message

    recs = samples_from_pcap(str(SAMPLE))
    batch = parse_samples(decode_message(samples_frame(recs, time.time())))
    verdicts = Scorer(load_model(MODEL)).verdicts(batch.samples)
    return [r for r, v in zip(recs, verdicts, strict=True) if v.anomalous]


def flood(n: int, workers: int) -> None:
    base = flagged_recs()
    print(f"flood: {n:,} samples from distinct sources (packets of {len(base)} flagged lab flows)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        peer = ZeekPeer(check_on_receipt=False).start()
        port = 19478
        (tmp / "serve.yaml").write_text(
            f"model: {MODEL}\nzeek: {{url: '{peer.url}'}}\n"
            f"serve: {{alerts: '', metrics_port: {port}, watch: false, workers: {workers}}}\n"
            f"rules: {{file: {tmp / 'dpack.rules'}, tick: 5}}\n"
        )
        exe = shutil.which("dpack") or str(Path(sys.executable).with_name("dpack"))
        proc = subprocess.Popen(
            [exe, "serve", "--config", str(tmp / "serve.yaml")], stderr=subprocess.DEVNULL
        )
        try:
            if not peer.connected.wait(60):
                raise SystemExit("dpack serve did not connect")
            time.sleep(1)
            print(f"{'sent':>10} {'scored':>10} {'rss MiB':>8} {'rules':>6} {'forgotten':>9}")
            print(f"{0:>10,} {0:>10,} {rss_kib(proc.pid) / 1024:>8.0f}")
            net4 = int(ipaddress.ip_address("11.0.0.0"))
            t0 = time.perf_counter()
            step = n // 8
            peak = 0
            for start in range(0, n, 64):
                batch = []
                for i in range(start, min(n, start + 64)):
                    r = dict(base[i % len(base)])
                    r["uid"] = f"F{i}"
                    if r["orig_h"].count(":"):
                        r["orig_h"] = str(
                            ipaddress.ip_address(int(ipaddress.ip_address("2001:db8::")) + (i << 64))
                        )
                    else:
                        r["orig_h"] = str(ipaddress.ip_address(net4 + i))
                    batch.append(r)
                peer.send(samples_frame(batch, time.time()))
                if (start // 64) % 64 == 0:  # keep what is in flight bounded: wait for the scorer
                    deadline = time.monotonic() + 60
                    while len(peer.verdict_times()) < start - 20_000 and time.monotonic() < deadline:
                        time.sleep(0.01)
                if start and start % step < 64:
                    m = metrics(port)
                    rss = rss_kib(proc.pid)
                    peak = max(peak, rss)
                    print(
                        f"{start:>10,} {int(m.get('flows_scored', 0)):>10,} {rss / 1024:>8.0f} "
                        f"{int(m.get('rules_active', m.get('rules_active_total', 0))):>6} {int(m.get('rules_sources_forgotten', 0)):>9}"
                    )
            deadline = time.monotonic() + 300
            while len(peer.verdict_times()) < n and time.monotonic() < deadline:
                time.sleep(0.1)
            dt = time.perf_counter() - t0
            m = metrics(port)
            rss = rss_kib(proc.pid)
            print(
                f"{n:>10,} {int(m.get('flows_scored', 0)):>10,} {rss / 1024:>8.0f} "
                f"{int(m.get('rules_active', m.get('rules_active_total', 0))):>6} {int(m.get('rules_sources_forgotten', 0)):>9}"
            )
            print(
                f"flood: {len(peer.verdict_times()):,} verdicts in {dt:.1f} s ({n / dt:,.0f} flows/s); "
                f"peak RSS {max(peak, rss) / 1024:.0f} MiB; dropped {int(m.get('flows_dropped', 0))}"
            )
        finally:
            proc.terminate()
            proc.wait(30)
            peer.stop()


def rule_write(n: int) -> None:
    from dpack.sinks.rules import Policy, RuleBook
    from dpack.verdict import Verdict

    with tempfile.TemporaryDirectory() as d:
        policy = Policy(scope="flow", threshold_flows=1, max_entries=n, sid_last=1_900_000 + 2 * n)
        book = RuleBook(policy, Path(d) / "dpack.rules")
        now = time.time()
        vs = [
            Verdict(now, "tcp", str(ipaddress.ip_address(0x0B000000 + i)), 40000 + i % 20000, "10.0.0.1", 80,
                    "", 1.0, 0.5, True, "dpack-default@0123456789ab", handshake=True)
            for i in range(n)
        ]  # fmt: skip
        t0 = time.perf_counter()
        book.observe(vs, now=now)
        t1 = time.perf_counter()
        book.write(validate=book.suricata is not None)
        t2 = time.perf_counter()
        size = (Path(d) / "dpack.rules").stat().st_size
        check = "with suricata -T" if book.suricata else "no suricata: not checked"
        print(
            f"rules: {len(book.state.entries):,} flow entries from {n:,} flagged flows: observe {t1 - t0:.2f} s, "
            f"write {t2 - t1:.2f} s ({check}), file {size / 1e6:.1f} MB"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--rule-flows", type=int, default=40_000)
    a = ap.parse_args()
    rule_write(a.rule_flows)
    flood(a.flows, a.workers)


if __name__ == "__main__":
    main()

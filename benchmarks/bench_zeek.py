"""What dpack costs Zeek, and the verdict latency Zeek logs.

    python benchmarks/bench_zeek.py [--capture PCAP] [--runs N] [--rates 1000,5000] [--seconds S]

1. The same capture through ``zeek -r`` with Zeek's default scripts: alone, with ``@load dpack``
   exporting to nobody, and with ``@load dpack`` and ``dpack serve`` attached (``DPack::score_traces``).
   Zeek's own CPU time (user + system of the zeek process, from wait4) and peak resident memory; the
   minimum of ``--runs`` runs of each, interleaved, and the ratios to Zeek alone. Default capture: lab-dev
   benign-train (381,160 frames, 23,115 connections).
2. A live sensor (``tools/zeeklab.py``: zeek -i on a veth in a namespace, dpack serve with 2 workers)
   fed at fixed connection rates: lab-dev benign-val's connections, each cut to its first packets, copied
   with other client addresses and started at ``rate`` per second for ``--seconds``; the ``latency``
   column of dpack.log (from the batch leaving Zeek to its verdicts being logged by Zeek) as p50/p99.

Needs a zeek on PATH (``make bench`` puts ../shared/zeek's there); part 2 also root and tcpreplay.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import pcaprec  # noqa: E402
import zeeklab  # noqa: E402

LAB = ROOT.parent / "shared" / "datasets" / "lab-dev"


def zeek_run(capture: Path, cwd: Path, env: dict[str, str], extra: list[str]) -> tuple[float, float, float]:
    """(CPU seconds, wall seconds, peak RSS MiB) of one ``zeek -r``."""
    cwd.mkdir(parents=True, exist_ok=True)
    for f in cwd.glob("*.log"):
        f.unlink()
    t = time.perf_counter()
    p = subprocess.Popen(
        ["zeek", "-r", str(capture), *extra],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if status != 0:
        raise RuntimeError(f"zeek failed: {p.stderr.read().decode()[-1000:] if p.stderr else ''}")
    return ru.ru_utime + ru.ru_stime, wall, ru.ru_maxrss / 1024


def part_cost(capture: Path, runs: int, work: Path) -> None:
    site = zeeklab.site_dir(work)
    env = zeeklab.zeek_env(site)
    port = zeeklab.free_port()
    cfg = work / "serve.yaml"
    cfg.write_text(
        json.dumps(
            {
                "zeek": {"url": f"ws://127.0.0.1:{port}/v1/messages/json", "reconnect_max": 0.3},
                "serve": {"metrics_port": 0, "alerts": "", "workers": 2},
            }
        )
    )
    serve = subprocess.Popen(
        [*zeeklab.dpack_cmd(), "serve", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    variants = {
        "zeek (default scripts)": [],
        "+ dpack, no scorer": ["dpack"],
        "+ dpack, scorer attached": ["dpack", "DPack::score_traces=T", f"DPack::listen_port={port}/tcp"],
    }
    best: dict[str, tuple[float, float, float]] = {}
    try:
        for _ in range(runs):
            for name, extra in variants.items():
                r = zeek_run(capture, work / name.replace(" ", "_"), env, extra)
                if name not in best or r[0] < best[name][0]:
                    best[name] = r
    finally:
        zeeklab.stop(serve)
    base = best["zeek (default scripts)"]
    print(f"\n{capture.name}: zeek -r, best of {runs} runs (interleaved)")
    print(f"{'':28} {'CPU s':>7} {'ratio':>6} {'wall s':>7} {'peak MiB':>9} {'ratio':>6}")
    for name, (cpu, wall, rss) in best.items():
        print(f"{name:28} {cpu:7.2f} {cpu / base[0]:6.3f} {wall:7.2f} {rss:9.0f} {rss / base[2]:6.3f}")
    conns = len(zeeklab.read_zeek_log(work / "+_dpack,_scorer_attached" / "dpack.log"))
    print(f"(scorer attached: {conns} verdicts in dpack.log)")


def _moved(data: bytes, linktype: int, copy: int) -> bytes:
    """A frame whose lab client address (10.201.1.x, 10.201.66.x) is moved to 10.<64 + copy>.x.y."""
    from dpack.traffic.packets import ip_offset

    off = ip_offset(data, linktype)
    b = bytearray(data)
    for at in (off + 12, off + 16):
        if b[at] == 10 and b[at + 1] == 201 and b[at + 2] != 0:
            b[at + 1] = 64 + copy % 128
    return bytes(b)


def rate_capture(src: Path, dst: Path, rate: float, seconds: float, keep: int = 6) -> int:
    """``src``'s connections, each cut to its first ``keep`` packets, copied with other client addresses
    (10.<64+copy>.x.y) and started ``rate`` per second; checksums recomputed by tcprewrite."""
    import dpack.traffic.keys as flows
    from dpack.traffic.packets import ip_offset, parse_ip

    linktype, snaplen, records = pcaprec.read(src)
    conns: dict[tuple[object, ...], list[pcaprec.Record]] = {}
    for r in records:
        off = ip_offset(r.data, linktype)
        p = parse_ip(r.data, off) if off >= 0 else None
        key = flows.flow_key(p) if p is not None else None
        if key is not None and len(conns.setdefault(key, [])) < keep:
            conns[key].append(r)
    groups = [g for g in conns.values() if g]
    n = int(rate * seconds)
    out: list[pcaprec.Record] = []
    for i in range(n):
        g = groups[i % len(groups)]
        copy = i // len(groups)
        t0 = i / rate

        out += [pcaprec.Record(t0 + (r.ts - g[0].ts), _moved(r.data, linktype, copy), r.wire_len) for r in g]
    out.sort(key=lambda r: r.ts)
    raw = dst.with_suffix(".raw.pcap")
    pcaprec.write(raw, out, linktype, snaplen)
    subprocess.run(
        ["tcprewrite", "--fixcsum", "-i", str(raw), "-o", str(dst)], check=True, capture_output=True
    )
    raw.unlink()
    return n


def part_latency(rates: list[float], seconds: float, work: Path) -> None:
    why = zeeklab.missing_for_live()
    if why:
        print(f"\nlive latency: skipped ({why})")
        return
    src = work / "benign-val.pcap"
    with gzip.open(LAB / "benign-val.pcap.gz", "rb") as fh, open(src, "wb") as out:
        shutil.copyfileobj(fh, out)
    print(
        f"\nlive sensor (zeek -i, dpack serve with 2 workers, tcpreplay on the same 2 cores), {seconds:.0f} s each"
    )
    print(
        f"{'flows/s':>8} {'flows':>7} {'verdicts':>8} {'latency p50 ms':>15} {'p99 ms':>8} {'scorer p99 ms':>14}"
    )
    for rate in rates:
        cap = work / f"rate-{int(rate)}.pcap"
        n = rate_capture(src, cap, rate, seconds)
        run = zeeklab.run_live([cap], work / f"live-{int(rate)}", "websocket", workers=2, pad=True)
        lat = np.array([float(v["latency"]) for v in run.log("dpack") if v.get("latency", "-") != "-"])
        sl = np.array(
            [float(v["scorer_latency"]) for v in run.log("dpack") if v.get("scorer_latency", "-") != "-"]
        )
        if not len(lat):
            print(f"{rate:8.0f} {n:7d} {0:8d}")
            continue
        p50, p99 = np.percentile(lat, [50, 99]) * 1e3
        print(f"{rate:8.0f} {n:7d} {len(lat):8d} {p50:15.2f} {p99:8.2f} {np.percentile(sl, 99) * 1e3:14.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capture", type=Path, default=LAB / "benign-train.pcap.gz")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rates", default="1000,5000")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--skip-live", action="store_true")
    a = ap.parse_args()
    if zeeklab.zeek_bin() is None:
        sys.exit("bench_zeek: no zeek on PATH (make bench puts ../shared/zeek/bin there)")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cap = zeeklab.plain_pcap(a.capture, work / "capture.pcap")
        part_cost(cap, a.runs, work)
        if not a.skip_live:
            part_latency([float(r) for r in a.rates.split(",")], a.seconds, work)


if __name__ == "__main__":
    main()

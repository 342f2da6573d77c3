"""The host-context stage: its speed next to the prefix model, its memory per host, a spoofed flood.

    python benchmarks/bench_context.py [--model MODEL_WITH_CONTEXT] [--flood 1000000]

1. Speed: the flows of lab-dev benign-val + attack-dev (the shipped sample without lab-dev), scored by the
   prefix model (``Scorer.verdicts_encoded``, one thread) and then decided by the stage
   (``ContextScorer.apply``), flows/s of each.
2. Memory per 100,000 hosts (growth of resident memory for a ``HostState``): one flow each, and 20 flows each.
3. A flood of ``--flood`` flows from as many distinct (spoofed) sources through the stage: hosts kept,
   forgotten, traced memory at the end (bounded by ``max_hosts``), flows/s.
Without ``--model``, a stage is fitted on the shipped sample first (figures of speed and memory do not
depend on what it was fitted on). Prints figures only.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT.parent / "shared" / "datasets" / "lab-dev"

from dpack.context.stage import ContextScorer  # noqa: E402
from dpack.context.state import HostState  # noqa: E402
from dpack.offline.context_fit import fit_context  # noqa: E402
from dpack.prefix.flowset import extract  # noqa: E402
from dpack.prefix.modelfile import load_model  # noqa: E402
from dpack.prefix.scorer import Scorer, sensor_order  # noqa: E402
from dpack.verdict import Verdict  # noqa: E402


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def traced(fn) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    """(growth of this process's resident memory while ``fn`` ran and its result lives, MiB; result)."""
    gc.collect()
    before = rss_mib()
    out = fn()
    gc.collect()
    return rss_mib() - before, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="a model file with a context stage (default: fit one on the sample)")
    ap.add_argument("--flood", type=int, default=1_000_000)
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path = a.model
        if path is None:
            path = str(tmp / "ctx.pt")
            fit_context(
                load_model(ROOT / "models" / "dpack-default.pt"),
                [ROOT / "samples" / "lab-sample.pcap.gz"],
                path,
            )
        model = load_model(path)
        caps = [LAB / "benign-val.pcap.gz", LAB / "attack-dev.pcap.gz"]
        if not all(c.exists() for c in caps):
            caps = [ROOT / "samples" / "lab-sample.pcap.gz"]
        fs = extract([str(c) for c in caps], model.spec)
        order = sensor_order(fs.samples).tolist()
        samples = [fs.samples[i] for i in order]
        scorer = Scorer(model, explain="anomalous", cache_size=0)
        t0 = time.perf_counter()
        vs: list[Verdict] = []
        for i in range(0, len(samples), 256):
            idx = order[i : i + 256]
            vs += scorer.verdicts_encoded(samples[i : i + 256], fs.data[idx], fs.direction[idx])
        t1 = time.perf_counter()
        ContextScorer(model.context).apply(vs)
        t2 = time.perf_counter()
        n = len(vs)
        print(f"speed: {n:,} flows of {', '.join(c.name for c in caps)}")
        print(f"  prefix model (batches of 256, no cache) {n / (t1 - t0):>10,.0f} flows/s")
        print(f"  host-context stage                      {n / (t2 - t1):>10,.0f} flows/s "
              f"({(t2 - t1) / (t1 - t0):.2f}x the prefix model's time)")  # fmt: skip

        for per in (1, 20):

            def fill(per: int = per) -> HostState:
                st = HostState(max_hosts=100_000)
                for h in range(100_000):
                    src = f"10.{h >> 16}.{(h >> 8) & 255}.{h & 255}"
                    host = st.host_of(src)
                    for k in range(per):
                        st.add(host, 1000.0 + k, "10.0.0.1", 80 + k % 3, False, False)
                return st

            mib, _ = traced(fill)
            print(
                f"memory: 100,000 hosts x {per:>2} flows each: {mib:,.0f} MiB ({mib * 2**20 / 1e5:,.0f} bytes/host)"
            )

        def flood() -> ContextScorer:
            cs = ContextScorer(model.context)
            batch = []
            for i in range(a.flood):
                src = f"{11 + (i >> 24)}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
                batch.append(
                    Verdict(
                        2000.0 + i * 1e-5,
                        "tcp",
                        src,
                        40000,
                        "10.0.0.1",
                        80,
                        "",
                        0.01,
                        model.threshold,
                        True,
                        "m",
                        [],
                        failed=True,
                    )
                )
                if len(batch) == 10_000:
                    cs.apply(batch)
                    batch = []
            cs.apply(batch)
            return cs

        t0 = time.perf_counter()
        mib, cs = traced(flood)
        dt = time.perf_counter() - t0
        st = cs.state  # type: ignore[attr-defined]
        print(f"flood: {a.flood:,} spoofed sources: {len(st.hosts):,} hosts kept, {st.forgotten:,} forgotten, "
              f"resident memory +{mib:,.0f} MiB; {a.flood / dt:,.0f} flows/s")  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

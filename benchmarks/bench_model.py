"""Model-only scoring speed for both architectures, against what the machine's matmul rate allows.

    python benchmarks/bench_model.py [--flows 65536] [--batch 4096]

For each architecture: FLOPs per flow (counted from the layers), flows/s of ``DPackNet.score`` on
batches of real encoded flows (the shipped sample, tiled), the machine's measured dense matmul FLOP rate,
and the ratio achieved / (rate / FLOPs per flow): how close to the machine's ceiling scoring runs.
Prints figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from dpack.prefix.flowset import extract
from dpack.prefix.model import DPackNet, ModelConfig, flops_per_flow, to_input
from dpack.prefix.modelfile import load_model
from dpack.traffic.encode import PrefixSpec

ROOT = Path(__file__).resolve().parents[1]


def matmul_rate(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def flows_per_s(net: DPackNet, x: torch.Tensor, batch: int, seconds: float = 3.0) -> float:
    with torch.no_grad():
        net.score(x[:batch])
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for i in range(0, len(x), batch):
                net.score(x[i : i + batch])
            done += len(x)
        return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, default=65536)
    ap.add_argument("--batch", type=int, default=4096)
    a = ap.parse_args()
    default = load_model(ROOT / "models" / "dpack-default.pt")
    spec: PrefixSpec = default.spec
    fs = extract([ROOT / "samples" / "lab-sample.pcap.gz"], spec)
    reps = -(-a.flows // len(fs))
    x = to_input(np.tile(fs.data, (reps, 1, 1))[: a.flows], np.tile(fs.direction, (reps, 1))[: a.flows])
    rate = matmul_rate()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul {rate / 1e9:.1f} GFLOP/s")
    print(f"input N={spec.n_packets} L={spec.n_bytes} ({a.flows} flows, batch {a.batch})")
    print(f"{'arch':<14} {'FLOPs/flow':>12} {'flows/s':>12} {'ceiling':>12} {'ratio':>7}")
    results = {}
    for arch, dim in (("paper", 1024), ("fast", 256)):
        cfg = ModelConfig(arch, spec.n_packets, spec.n_bytes, profile_dim=dim)
        net = DPackNet(cfg).eval()
        fl = flops_per_flow(cfg)
        fps = flows_per_s(net, x, a.batch)
        results[arch] = (fl, fps)
        print(f"{arch:<14} {fl:>12,} {fps:>12,.0f} {rate / fl:>12,.0f} {fps / (rate / fl):>7.2f}")
    fps = flows_per_s(default.net, x, a.batch)
    print(f"{'shipped':<14} {flops_per_flow(default.net.cfg):>12,} {fps:>12,.0f}")
    (pf, pfs), (ff, ffs) = results["paper"], results["fast"]
    print(f"fast vs paper: {pf / ff:.1f}x fewer FLOPs, {ffs / pfs:.1f}x the flows/s")


if __name__ == "__main__":
    main()

"""Learn a site live: a capture's flows sent to ``dpack serve`` in learning mode, as Zeek would send them.

    python tools/learn_live.py BENIGN.pcap[.gz] OUT_DIR [--site NAME]

A peer in this process plays Zeek (tests/zeekpeer.py) over a real WebSocket on 127.0.0.1; ``dpack serve``
runs in this process (as tests/servekit.py runs it) with ``learn:`` on, until the background training
ends. Prints the learner's outcome; the model is OUT_DIR/site-model.pt, the recording OUT_DIR/recorded.pcap.
Compare it with ``dpack train`` on the same capture using ``dpack evaluate --model OUT_DIR/site-model.pt``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    from servekit import Running, free_port, send_batches, wait_for
    from zeekpeer import ZeekPeer, samples_from_pcap

    from dpack.config import load_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture")
    ap.add_argument("out", type=Path)
    ap.add_argument("--site", default="")
    a = ap.parse_args()
    recs = samples_from_pcap(a.capture)
    peer = ZeekPeer(check_on_receipt=False).start()
    # a little under the capture's flows: a learning period ends on flows recorded, and Zeek's batches
    # of a replay may leave a few out
    learn = {
        "enabled": True,
        "dir": str(a.out),
        "flows": max(1, len(recs) - 200),
        "site": a.site,
        "max_fpr": 0.03,
    }
    cfg = load_config(None, env={}, overrides={
        "zeek": {"url": peer.url, "topic": "dpack/samples", "reconnect_max": 0.5},
        "serve": {"alerts": "", "metrics_port": free_port(), "watch": False},
        "learn": learn,
    })  # fmt: skip
    run = Running(cfg)
    try:
        if not peer.connected.wait(30):
            raise SystemExit("dpack serve did not connect")
        t0 = time.time()
        send_batches(peer, recs)
        wait_for(lambda: run.service.learner.state in ("done", "refused"), timeout=1800, what="learning")
        lr = run.service.learner
        print(
            f"{len(recs)} flows sent, {lr.flows} recorded; {lr.state} {lr.reason} {lr.trained}; {time.time() - t0:.1f} s"
        )
    finally:
        run.stop()
        peer.stop()
    return 0


if __name__ == "__main__":  # the training runs in a spawned process, which imports this module
    sys.exit(main())

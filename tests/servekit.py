"""What the ``dpack serve`` tests share: a Service running as ``dpack serve`` runs it (its own event loop in a
thread), its config against a fault-injecting Zeek peer (``zeekpeer.py``), waiting and sending helpers.
The fixtures that use these are in ``conftest.py``."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request

from zeekpeer import samples_frame

from dpack.config import load_config
from dpack.serve.service import Service


def wait_for(cond, timeout=20.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A Service on its own event loop in a thread (as ``dpack serve`` runs it), stoppable like SIGTERM."""

    def __init__(self, cfg, scorer_wrap=None):
        self.cfg = cfg
        self.service = None
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.scorer_wrap = scorer_wrap
        self.thread.start()
        wait_for(lambda: self.service is not None and self.service.loop is not None, what="service start")

    def _run(self):
        async def main():
            self.service = Service(self.cfg)
            if self.scorer_wrap:
                self.scorer_wrap(self.service)
            await self.service.run()

        try:
            asyncio.run(main())
        except BaseException as err:  # noqa: BLE001 - reported by stop()
            self.error = err

    @property
    def m(self):
        return self.service.metrics.counts

    def stop(self):
        self.service.loop.call_soon_threadsafe(self.service.stop.set)
        self.thread.join(30)
        assert not self.thread.is_alive(), "service did not stop"
        assert self.error is None, self.error


def make_cfg(tmp_path, peer, model, **serve):
    cfg = load_config(
        None,
        env={},
        overrides={
            "model": str(model),
            "zeek": {"url": peer.url, "topic": "dpack/samples", "reconnect_max": 0.5},
            "serve": {
                "alerts": str(tmp_path / "alerts.jsonl"),
                "metrics_port": free_port(),
                "log_interval": 0.5,
                # these tests are about serving, not about whether the lab model fits the sample: the
                # day-one guard (on for the shipped model) has its own tests (test_watch.py)
                "guard": "off",
                **serve,
            },
        },
    )
    return cfg


def send_batches(peer, recs, size=64, **kw):
    for i in range(0, len(recs), size):
        peer.send(samples_frame(recs[i : i + size], time.time(), **kw))


def metrics_text(cfg):
    url = f"http://127.0.0.1:{cfg.serve.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()

"""Learning mode of ``dpack serve``: learn this site, then detect.

While learning (config ``learn:``), every sample Zeek sends is still scored and answered, but its verdict
is marked as learning (``anomalous`` false, explanation ``["learning"]``, model ``learning:NAME``), so
Zeek raises no notice and no rule is written; the samples' frames are recorded to a capture file
(``learn.dir``/``recorded.pcap``, bounded by ``learn.max_mb``). When ``learn.flows`` flows are recorded
(or ``learn.duration`` seconds have passed), a background process trains a model on the first part of
the recording with the same code as ``dpack train`` (the recording is an ordinary pcap: ``dpack train
DIR/recorded.pcap`` gives the same model offline), scores the held-back last part with it, and refuses it
with its reason (too few flows; held-back false-positive rate above ``learn.max_fpr``). A model that
passes is written atomically to ``learn.out`` with its provenance (site, period, counts) and swapped in
without dropping the Zeek connection. Learning never restarts by itself: relearning is a config change.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..config import LearnConfig
from ..learn import _pcap_header, pcap_record
from ..traffic.encode import PrefixSpec
from ..traffic.flows import FlowSample
from ..verdict import Verdict

log = logging.getLogger(__name__)

STATES = ("off", "recording", "training", "done", "refused")
DEDUP_UIDS = 1_000_000  # uids remembered for deduplication (about 100 MB at most)


class Learner:
    """The recording and the hand-over to the background training; polled by the service."""

    def __init__(self, cfg: LearnConfig, spec: PrefixSpec | None = None, context: bool = True) -> None:
        self.cfg = cfg
        self.context = context  # fit the host-context stage too (detectors.context)
        self.spec = spec or PrefixSpec()  # the serving model's: what Zeek exports, so what to learn
        self.dir = Path(cfg.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "recorded.pcap"
        self.out = Path(cfg.out) if cfg.out else self.dir / "site-model.pt"
        self.fh: Any = None
        self.linktype: int | None = None
        self.flows = 0
        self.skipped = 0  # samples of another link type than the recording's
        # the same connection exported twice (a node's batch resent after a reconnect) is recorded once:
        # uids of the last DEDUP_UIDS samples
        self.seen_uids: OrderedDict[str, None] = OrderedDict()
        self.duplicates = 0
        self.bytes = 0
        self.started = time.time()
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.state = "recording"
        self.reason = ""
        self.proc: Any = None
        self.result_path = self.dir / "result.json"
        self.trained: dict[str, Any] = {}

    # --- recording --------------------------------------------------------------------------------------

    def take(self, samples: list[FlowSample], verdicts: list[Verdict]) -> None:
        """Record the samples and mark their verdicts as learning (no notice, no rule)."""
        for v in verdicts:
            v.anomalous = False
            v.explanation = ["learning"]
            v.model = f"learning:{v.model}"
        if self.state != "recording":
            return
        for s in samples:
            if not s.frames:
                continue
            if s.uid:
                if s.uid in self.seen_uids:
                    self.duplicates += 1
                    continue
                self.seen_uids[s.uid] = None
                if len(self.seen_uids) > DEDUP_UIDS:
                    self.seen_uids.popitem(last=False)
            lt = s.frames[0].linktype
            if self.fh is None:
                self.linktype = lt
                self.fh = open(self.path, "wb")
                self.fh.write(_pcap_header(lt))
                self.bytes = 24
            if lt != self.linktype:
                self.skipped += 1
                continue
            for i, fr in enumerate(s.frames):
                # the export has each flow's first time; its packets follow it in order
                self.fh.write(pcap_record(s.ts + i * 1e-6, fr.data))
                self.bytes += 16 + len(fr.data)
            self.flows += 1
            self.first_ts = s.ts if self.first_ts is None else min(self.first_ts, s.ts)
            self.last_ts = s.ts if self.last_ts is None else max(self.last_ts, s.ts)
        if self.period_over():
            self.finish_recording()

    def period_over(self) -> bool:
        c = self.cfg
        return (
            self.flows >= c.flows
            or (c.duration > 0 and time.time() - self.started >= c.duration)
            or self.bytes >= c.max_mb * 2**20
        )

    def finish_recording(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        log.info(
            "learning: %d flows recorded (%d skipped, %d duplicates, %.1f MB); training",
            self.flows,
            self.skipped,
            self.duplicates,
            self.bytes / 1e6,
        )
        if self.flows < self.cfg.min_flows:
            self.refuse(
                f"too few flows to learn from ({self.flows} recorded, learn.min_flows is {self.cfg.min_flows})"
            )
            return
        self.state = "training"
        self.result_path.unlink(missing_ok=True)
        ctx = mp.get_context("spawn")  # a clean process: training must not share the serving loop's state
        self.proc = ctx.Process(target=_train_job, args=(str(self.path), str(self.out), str(self.result_path), self._provenance(), _opts(self.cfg, self.spec, self.context)), daemon=True, name="dpack-learn")  # fmt: skip
        self.proc.start()

    def refuse(self, reason: str) -> None:
        self.state = "refused"
        self.reason = reason
        log.error("learning refused: %s; still serving the old model (relearn: a config change)", reason)

    def _provenance(self) -> dict[str, Any]:
        return {
            "site": self.cfg.site,
            "period": [self.first_ts, self.last_ts],
            "flows_recorded": self.flows,
            "learned_live": True,
        }

    # --- the background job --------------------------------------------------------------------------

    def poll(self) -> str | None:
        """The learned model's path once training finished and it passed, else None (state says why)."""
        if self.state == "recording" and self.period_over():
            self.finish_recording()
        if self.state != "training" or self.proc is None or self.proc.is_alive() or self.trained:
            return None
        self.proc.join()
        try:
            res = json.loads(self.result_path.read_text())
        except (OSError, ValueError):
            self.refuse(f"the training process ended without a result (exit {self.proc.exitcode})")
            return None
        if not res.get("ok"):
            self.refuse(str(res.get("reason", "unknown")))
            return None
        self.trained = res
        log.info(
            "learning: model %s learned (held-back FPR %.4f on %d flows)",
            self.out,
            res["heldback_fpr"],
            res["heldback_flows"],
        )
        if res.get("context_left_out"):
            log.warning("learning: %s", res["context_left_out"])
        return str(self.out)

    def swapped(self) -> None:
        """The service serves the learned model now (``done`` only then: tests and metrics see it so)."""
        self.state = "done"

    def figures(self) -> dict[str, int]:
        return {
            "learning_flows": self.flows,
            "learning_duplicates": self.duplicates,
            "learning_state": STATES.index(self.state),
        }


def _opts(c: LearnConfig, spec: PrefixSpec, context: bool) -> dict[str, Any]:
    return {
        "held_back": c.held_back,
        "target_fpr": c.target_fpr,
        "max_fpr": c.max_fpr,
        "min_flows": c.min_flows,
        "min_service_flows": c.min_service_flows,
        "spec": spec,
        "context": context,
    }


def _train_job(
    recording: str, out: str, result: str, provenance: dict[str, Any], opts: dict[str, Any]
) -> None:
    """In the background process: train on the first part of the recording, validate on the rest, write
    the model only if it passes; the result (ok, reason, figures) as JSON at ``result``."""
    from ..fileio import atomic_write_bytes

    def done(**res: Any) -> None:
        atomic_write_bytes(result, json.dumps(res).encode())

    from ..learn import learn_from  # in the spawned process: the training code, not the serving loop's

    try:
        done(**learn_from(recording, out, provenance, **opts))
    except Exception as err:  # noqa: BLE001 - reported to the service as the refusal's reason
        done(ok=False, reason=f"training failed: {type(err).__name__}: {err}")

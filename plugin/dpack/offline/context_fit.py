"""``dpack train-context``: fit the host-context stage of a prefix model on benign captures.

The captures are scored by the model's prefix (``score_capture``, the path ``dpack score`` takes), the
verdicts run in stream order through the host state (``ContextScorer.rows``: the code that scores them
later), and the stage is fitted on the first part of that benign stream and calibrated on the held-back
last part (``stage.fit``). The result is the same model file with a ``context`` entry and its provenance.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..context.stage import context_rows, fit, service_of
from ..context.state import HostKey, HostState
from ..fileio import sha256_file
from ..modelio import load_blob, save_blob
from ..prefix.modelfile import FORMAT, FORMAT_VERSION, LoadedModel
from ..prefix.scorer import Scorer
from ..traffic.flows import FlowRules
from ..verdict import Verdict
from .score import score_capture


def prefix_verdicts(
    model: LoadedModel, captures: Sequence[str | os.PathLike[str]], rules: FlowRules | None, workers: int
) -> list[Verdict]:
    """Every flow's prefix verdict, capture after capture, in the order ``dpack score`` writes them."""
    out: list[Verdict] = []
    scorer = Scorer(model, explain="none")
    for cap in captures:
        score_capture(cap, scorer, None, 4096, rules, on_verdicts=out.extend, workers=workers)
    return out


def fit_context(
    model: LoadedModel,
    captures: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    target_fpr: float = 0.005,
    key: HostKey | None = None,
    held_back: float = 0.2,
    rules: FlowRules | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    t0 = time.time()
    key = key or HostKey()
    vs = prefix_verdicts(model, captures, rules, workers)
    rows, hosts = context_rows(HostState(key), vs)
    h = np.asarray(hosts)
    sv = np.asarray([service_of(v) for v in vs])
    # held back: every k-th of 20 consecutive blocks of the stream (as the prefix model's calibration),
    # so that both parts see every hour's behaviour; the histories ran over the whole stream already
    block = np.arange(len(rows)) * 20 // max(1, len(rows))
    back = block % max(2, round(1 / held_back)) == max(2, round(1 / held_back)) - 1
    cut = int((~back).sum())
    stage = fit(
        rows[~back],
        h[~back].tolist(),
        sv[~back].tolist(),
        rows[back],
        h[back].tolist(),
        sv[back].tolist(),
        target_fpr,
        key,
        {
            "captures": [{"name": os.path.basename(str(c)), "sha256": sha256_file(c)} for c in captures],
            "prefix_model": model.name,
            "prefix_threshold": model.threshold,
            "held_back": held_back,
            "trained": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    blob = copy.copy(load_blob(model.path, FORMAT, FORMAT_VERSION, "dpack model"))
    blob["context"] = stage.to_blob()
    save_blob(out, blob)
    return {
        "flows": len(rows),
        "fit_rows": cut,
        "calibration_rows": len(rows) - cut,
        "threshold": stage.threshold,
        "prefix_max": stage.prefix_max,
        "calibration_fpr": stage.provenance["calibration_fpr"],
        "hosts": len(set(hosts)),
        "known_hosts": len(stage.levels),
        "seconds": round(time.time() - t0, 1),
    }

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/pcaps.py

SAMPLE = ROOT / "samples" / "lab-sample.pcap.gz"
SAMPLE_LABELS = ROOT / "samples" / "lab-sample.labels.csv"
DEFAULT_MODEL = ROOT / "models" / "dpack-default.pt"
LAB_DEV = ROOT.parent / "shared" / "datasets" / "lab-dev"


@pytest.fixture(scope="session")
def default_model():
    from dpack.modelfile import load_model

    return load_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A small fast model trained for real on the sample capture's benign flows (a few seconds)."""
    from dpack.packets import PrefixSpec
    from dpack.train import TrainOptions, train

    out = tmp_path_factory.mktemp("model") / "tiny.pt"
    opts = TrainOptions(
        arch="fast", spec=PrefixSpec(2, 80, "payload"), cnn_epochs=2, ae_epochs=3, name="tiny"
    )
    train([SAMPLE], out, opts)
    return out

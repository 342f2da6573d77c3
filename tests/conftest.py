from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/pcaps.py
sys.path.insert(0, str(ROOT / "tools"))  # tools/zeeklab.py: the real Zeek, namespaces, replays

SAMPLE = ROOT / "samples" / "lab-sample.pcap.gz"
SAMPLE_LABELS = ROOT / "samples" / "lab-sample.labels.csv"
DEFAULT_MODEL = ROOT / "models" / "dpack-default.pt"
LAB_DEV = ROOT.parent / "shared" / "datasets" / "lab-dev"


def offline_verdicts(model, capture=None):
    """Every flow's verdict of ``capture`` (the sample) as ``dpack score`` gives it with ``model``: the
    prefix model, then its host-context stage when the file has one (what ``dpack serve`` applies)."""
    from dpack.context.stage import ContextScorer
    from dpack.offline.score import score_capture
    from dpack.prefix.scorer import Scorer

    out = []
    stage = ContextScorer(model.context) if model.context is not None else None
    score_capture(capture or SAMPLE, Scorer(model), on_verdicts=out.extend, context=stage)
    return out


@pytest.fixture(scope="session")
def default_model():
    from dpack.prefix.modelfile import load_model

    return load_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A small fast model trained for real on the sample capture's benign flows (a few seconds)."""
    from dpack.prefix.train import TrainOptions, train
    from dpack.traffic.encode import PrefixSpec

    out = tmp_path_factory.mktemp("model") / "tiny.pt"
    opts = TrainOptions(
        arch="fast", spec=PrefixSpec(2, 80, "payload"), cnn_epochs=2, ae_epochs=3, name="tiny"
    )
    train([SAMPLE], out, opts)
    return out


@pytest.fixture(scope="session")
def records_model_path(tmp_path_factory):
    """A flow-record autoencoder trained for real on the sample capture's benign records (seconds)."""
    from dpack.records.features import labelled_records, record_table
    from dpack.records.recordae import RecordAEOptions, fit_record_ae, save_record_model

    out = tmp_path_factory.mktemp("records") / "records-ae.pt"
    lr = labelled_records([SAMPLE])
    benign = record_table([r for r, a in zip(lr.records, lr.is_attack, strict=True) if not a])
    save_record_model(out, fit_record_ae(benign, RecordAEOptions(epochs=30)), name="records-test")
    return out


@pytest.fixture(scope="session")
def classifier_model_path(tmp_path_factory):
    """A CNN-BiLSTM trained for real on the labelled sample capture (its labels CSV is beside it)."""
    from dpack.records.classifier import FitOptions
    from dpack.records.train import train_classifier

    out = tmp_path_factory.mktemp("classifier") / "classifier.pt"
    train_classifier([SAMPLE], out, FitOptions(epochs=12, patience=4, batch_size=64))
    return out


def need(missing: str) -> None:
    """Skip, visibly, a test that needs what this machine lacks (``missing`` says what). Where the test
    command found a Zeek (``DPACK_REQUIRE_ZEEK=1``, see the Makefile), fail instead: there no Zeek test
    may pass by skipping."""
    if os.environ.get("DPACK_REQUIRE_ZEEK") == "1":
        pytest.fail(f"a Zeek is at hand but this test cannot run: {missing}")
    pytest.skip(missing)


@pytest.fixture(scope="session")
def zeek():
    """The directory of a working ``zeek`` on PATH (``make test`` puts ../shared/zeek's there)."""
    import zeeklab

    where = zeeklab.zeek_bin()
    if where is None:
        need("no zeek on PATH (make test puts ../shared/zeek/bin there)")
    return where


@pytest.fixture(scope="session")
def live_sensor(zeek):
    """What a live sensor test needs besides Zeek: root, iproute2, ethtool, tcpreplay."""
    import zeeklab

    why = zeeklab.missing_for_live()
    if why:
        need(why)
    return zeek


# --- dpack serve against a fault-injecting Zeek peer (tests/servekit.py) ---------------------------------


@pytest.fixture
def peer():
    """A WebSocket peer on 127.0.0.1 that plays Zeek's side of the contract (and injects faults)."""
    from zeekpeer import ZeekPeer

    p = ZeekPeer().start()
    yield p
    p.stop()


@pytest.fixture
def model_copy(tmp_path):
    import shutil

    dst = tmp_path / "model.pt"
    shutil.copy(DEFAULT_MODEL, dst)
    return dst


@pytest.fixture
def start(tmp_path, peer, model_copy):
    """Start a service against ``peer``, wait until it is connected; stopped after the test."""
    from servekit import Running, make_cfg

    runs = []

    def go(scorer_wrap=None, **serve):
        run = Running(make_cfg(tmp_path, peer, model_copy, **serve), scorer_wrap)
        runs.append(run)
        assert peer.connected.wait(10)
        return run

    yield go
    for run in runs:
        run.stop()


@pytest.fixture(scope="module")
def sample_recs():
    """The shipped sample's flows as the samples Zeek would send."""
    from zeekpeer import samples_from_pcap

    return samples_from_pcap(str(SAMPLE))

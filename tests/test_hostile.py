"""Seeded, bounded mutation runs: damaged captures and model files give a clear error or a counted skip,
never an unexpected exception."""

from __future__ import annotations

import gzip
import random

import pytest
from conftest import DEFAULT_MODEL, SAMPLE

from dpack.errors import CaptureError, ModelError
from dpack.prefix.modelfile import load_model
from dpack.traffic.capture import CaptureStats, read_capture
from dpack.traffic.encode import PrefixSpec, encode_flow
from dpack.traffic.flows import FlowTable


@pytest.fixture(scope="module")
def sample_head():
    return gzip.decompress(SAMPLE.read_bytes())[:60_000]


@pytest.mark.parametrize("seed", range(25))
def test_mutated_capture_never_crashes(tmp_path, sample_head, seed):
    rng = random.Random(seed)
    b = bytearray(sample_head)
    for _ in range(rng.randint(1, 40)):
        i = rng.randrange(len(b))
        b[i] = rng.randrange(256)
    if seed % 3 == 0:
        b = b[: rng.randrange(24, len(b))]
    p = tmp_path / "m.pcap"
    p.write_bytes(bytes(b))
    spec = PrefixSpec(3, 80, "payload")
    table = FlowTable(spec)
    st = CaptureStats()
    try:
        for ts, lt, fr in read_capture(p, st):
            for s in table.add(ts, lt, fr):
                assert encode_flow(s.frames, spec).data.shape == (3, 80)
    except CaptureError as err:
        assert "\n" not in str(err)
    for s in table.flush():
        encode_flow(s.frames, spec)
    assert st.frames >= 0


@pytest.mark.parametrize("seed", range(15))
def test_mutated_model_file_is_refused_or_loads(tmp_path, seed):
    rng = random.Random(seed)
    b = bytearray(DEFAULT_MODEL.read_bytes())
    for _ in range(rng.randint(1, 10)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    p = tmp_path / "m.pt"
    p.write_bytes(bytes(b))
    try:
        load_model(p)  # a flip inside float weights can load; that is what the file hash in verdicts is for
    except ModelError as err:
        assert "\n" not in str(err)


def test_remembered_addresses_and_ports_stay_bounded_and_right():
    """The codec remembers parsed addresses, their text and ports (the same hosts and services come back);
    hostile traffic with ever new ones cannot grow that without limit, and what comes back is right."""
    from dpack.errors import CodecError
    from dpack.zeek import wire as codec

    for i in range(70_000):
        a = codec._address(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
        assert codec._text(a) == str(a)
        p = codec._port(f"{i % 65536}/{'tcp' if i < 65536 else 'udp'}")
        assert (p.number, p.proto) == (i % 65536, "tcp" if i < 65536 else "udp")
        assert max(len(codec._ADDRS), len(codec._TEXTS), len(codec._PORTS)) <= 65536
    assert codec._text(codec._address("2001:DB8::1")) == "2001:db8::1"  # canonical text, not the wire's
    for bad in ("70000/tcp", "80", "x/tcp", 80):
        with pytest.raises(CodecError, match="bad port"):
            codec._port(bad)


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), -1.0, 0.0, "0.1"])
def test_a_model_whose_threshold_would_silence_or_flood_detection_is_refused(tmp_path, threshold):
    import torch

    blob = torch.load(DEFAULT_MODEL, weights_only=True)
    blob["threshold"] = threshold
    path = tmp_path / "bad.pt"
    torch.save(blob, path)
    with pytest.raises(ModelError, match="threshold"):
        load_model(path)


def test_a_model_declaring_a_huge_layer_is_refused_before_allocation(tmp_path, monkeypatch):
    import torch

    from dpack.prefix import model as prefix_model

    blob = torch.load(DEFAULT_MODEL, weights_only=True)
    blob["config"]["profile_dim"] = 1 << 20  # about 1e11 parameters declared: terabytes if built
    path = tmp_path / "huge.pt"
    torch.save(blob, path)
    built_on = []
    real_init = prefix_model.DPackNet.__init__

    def spy(self, *a, **k):
        built_on.append(torch.empty(0).device.type)  # the default device while the network is built
        real_init(self, *a, **k)

    monkeypatch.setattr(prefix_model.DPackNet, "__init__", spy)
    with pytest.raises(ModelError, match="parameters, more than"):
        load_model(path)
    assert built_on == ["meta"]  # declared, measured, refused: never built in real memory


@pytest.mark.parametrize(
    "text",
    [
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b]\n",
        "scoring: " + "[" * 5000 + "]" * 5000 + "\n",
        "scoring: {batch_size: " + "9" * 5000 + "}\n",
        "rules: {ttl: .inf}\n",
        "rules: {sid_first: 1000000.5}\n",
        "rules: {tick: abc}\n",
        "rules: {window: .nan}\n",
        "when: 2020-13-45\n",
    ],
    ids=[
        "alias-bomb",
        "deep-nesting",
        "huge-int",
        "ttl-inf",
        "float-sid",
        "tick-abc",
        "window-nan",
        "bad-date",
    ],
)
def test_a_hostile_config_is_one_bounded_error_line(tmp_path, text):
    from dpack.config import load_config
    from dpack.errors import ConfigError

    path = tmp_path / "dpack.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message


def test_a_config_that_is_not_a_text_file_is_one_error_line(tmp_path):
    import os

    from dpack.config import load_config
    from dpack.errors import ConfigError

    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"scoring:\n  batch_size: \xff\xfe\n")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path, why in [(binary, "not UTF-8"), (tmp_path, "is a directory"), (fifo, "not a regular file")]:
        with pytest.raises(ConfigError, match=why):
            load_config(path, env={})  # the FIFO: refused at once, not a read that blocks forever


def test_a_pipe_as_capture_is_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "capture.pcap"
    os.mkfifo(fifo)
    with pytest.raises(CaptureError, match="not a regular file"):
        next(iter(read_capture(fifo, CaptureStats())))


@pytest.mark.parametrize(
    "row",
    [
        "1,tcp,10.0.0.1",
        "1,tcp,10.0.0.1,1,10.0.0.2,80,benign,web,extra",
        "1,tcp,10.0.0.1,x,10.0.0.2,80,benign,w",
    ],
    ids=["short-row", "long-row", "bad-port"],
)
def test_a_malformed_labels_row_is_one_error_naming_its_line(tmp_path, row):
    from dpack.errors import LabelsError
    from dpack.traffic.labels import read_labels

    path = tmp_path / "x.labels.csv"
    path.write_text("ts_first,proto,src,sport,dst,dport,label,family\n" + row + "\n")
    with pytest.raises(LabelsError, match=r"x\.labels\.csv:2: "):
        read_labels(path)


def test_a_labels_file_written_by_a_spreadsheet_reads(tmp_path):
    from dpack.traffic.labels import read_labels

    path = tmp_path / "x.labels.csv"
    path.write_bytes(
        "\ufeffts_first,proto,src,sport,dst,dport,label,family\r\n1.0,tcp,10.0.0.1,1,10.0.0.2,80,Attack,dos\r\n".encode()
    )
    assert read_labels(path) == {("1.0", "tcp", "10.0.0.1", 1, "10.0.0.2", 80): (True, "dos")}

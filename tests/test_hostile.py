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

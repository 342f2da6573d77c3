"""Networks, model files (round trip, refusal of damaged or mismatched files), thresholds, explanations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DEFAULT_MODEL

from dpack.errors import ModelError
from dpack.prefix.model import DPackNet, ModelConfig, PaperCNN, flops_per_flow, to_input
from dpack.prefix.modelfile import load_model, save_model
from dpack.prefix.train import threshold_from
from dpack.traffic.encode import PrefixSpec


def test_paper_architecture_shapes():
    net = DPackNet(ModelConfig("paper", 2, 80, profile_dim=1024))
    convs = [m for m in net.cnn.conv if isinstance(m, torch.nn.Conv1d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [(32, 6), (64, 6)]
    assert net.cnn.head.out_features == 25
    dims = [m.out_features for m in net.ae if isinstance(m, torch.nn.Linear)]
    assert dims == [512, 256, 512, 1024]
    x = to_input(np.zeros((5, 2, 80), np.uint8), np.zeros((5, 2), np.int8))
    logits, profile = net(x)
    assert logits.shape == (5, 25) and profile.shape == (5, 1024) and net.score(x).shape == (5,)


def test_fast_has_at_least_8x_fewer_flops():
    for n in (2, 3, 4):
        paper = flops_per_flow(ModelConfig("paper", n, 80, profile_dim=1024))
        fast = flops_per_flow(ModelConfig("fast", n, 80, profile_dim=256))
        assert paper / fast >= 8, (n, paper, fast)
    # by hand, 3 x 80 bytes = 30 patches: 2 x (30*24*2*8 + 30*32*24*3 + 960*256 + 256*128 + 128*64
    # + 64*128 + 128*256) - every layer counted, whichever way the model computes it
    assert flops_per_flow(ModelConfig("fast", 3, 80, profile_dim=256)) == 816_640


def test_threshold_methods():
    s = np.linspace(0, 1, 1001)
    assert threshold_from(s, "quantile", 0.01, 3) == pytest.approx(0.99)
    assert threshold_from(s, "sigma", 0.01, 3) == pytest.approx(s.mean() + 3 * s.std())


def test_model_file_round_trip(tmp_path):
    net = DPackNet(ModelConfig("fast", 2, 80, profile_dim=64))
    spec = PrefixSpec(2, 80, "first")
    p = tmp_path / "m.pt"
    save_model(p, net, spec, threshold=0.25, name="t", provenance={"files": []})
    m = load_model(p, expect=spec)
    assert m.threshold == 0.25 and m.spec == spec and m.name.startswith("t@")
    for k, v in net.state_dict().items():
        assert torch.equal(v, m.net.state_dict()[k])
    # the file is plain tensors and values: the safe loader reads it
    assert torch.load(p, weights_only=True)["format"] == "dpack-model"


def test_shipped_default_model_card_facts(default_model):
    prov = default_model.meta["provenance"]
    assert [f["name"] for f in prov["files"]] == ["benign-train.pcap.gz"]
    assert default_model.meta["threshold_method"] in ("quantile", "sigma")
    assert default_model.threshold == pytest.approx(default_model.meta["thresholds"]["quantile"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[: len(b) // 2], "not a readable dpack model"),
        (lambda b: b"\0" * 100, "not a readable dpack model"),
        (lambda b: b"", "not a readable dpack model"),
    ],
)
def test_corrupt_model_files(tmp_path, mutate, message):
    p = tmp_path / "bad.pt"
    p.write_bytes(mutate(DEFAULT_MODEL.read_bytes()))
    with pytest.raises(ModelError, match=message) as ei:
        load_model(p)
    assert "\n" not in str(ei.value)


def test_model_with_foreign_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    torch.save({"format": "dpack-model", "x": Evil()}, p)
    with pytest.raises(ModelError, match="not a readable dpack model"):
        load_model(p)


def test_wrong_contents_and_versions(tmp_path):
    p = tmp_path / "m.pt"
    torch.save({"hello": 1}, p)
    with pytest.raises(ModelError, match="not a dpack model file"):
        load_model(p)
    torch.save({"format": "dpack-model", "format_version": 99}, p)
    with pytest.raises(ModelError, match="format version 99"):
        load_model(p)
    blob = torch.load(DEFAULT_MODEL, weights_only=True)
    del blob["state_dict"]["ae.0.weight"]
    torch.save(blob, p)
    with pytest.raises(ModelError, match="damaged dpack model"):
        load_model(p)


def test_mismatched_export_is_refused_with_one_line():
    with pytest.raises(ModelError) as ei:
        load_model(DEFAULT_MODEL, expect=PrefixSpec(2, 80, "first"))
    msg = str(ei.value)
    assert "\n" not in msg and "packets=3" in msg and "packets=2" in msg and "policy=first" in msg


def test_missing_model():
    with pytest.raises(ModelError, match="no such model file"):
        load_model("does/not/exist.pt")


def _random_fast(n: int, length: int) -> DPackNet:
    """A ``fast`` net with trained-looking weights: large enough to leave dead units."""
    net = DPackNet(ModelConfig("fast", n, length, profile_dim=64))
    for prm in net.parameters():
        torch.nn.init.normal_(prm, std=0.3)
    net.p_mean.normal_()
    net.p_std.uniform_(0.5, 2.0)
    net.x_mean.uniform_()
    return net


def test_fast_layers_as_matrix_products_equal_the_convolution_modules():
    """``FastCNN`` computes its convolutions as matrix products; they are the ``nn.Conv1d`` modules'
    function (whose parameters they use), for several prefix shapes and batch sizes."""
    torch.manual_seed(2)
    for n, length in ((3, 80), (2, 64), (1, 40)):
        net = _random_fast(n, length)
        for b in (1, 7, 300):
            x = torch.rand(b, 2, n * length)
            with torch.no_grad():
                want = PaperCNN.embed(net.cnn, x)  # the modules: conv -> profile
                got = net.cnn.embed(x)
            assert got.shape == want.shape
            assert (got - want).abs().max() <= 1e-5 * want.abs().max(), (n, length, b)


def test_fast_attribution_by_hand_equals_autograd_through_the_convolutions():
    """The ``fast`` model's attributions (worked out by hand) equal autograd through its convolution
    modules, for several prefix shapes, batch sizes, rows of zeros (empty slots) and trained-looking
    weights with dead units."""
    torch.manual_seed(3)
    for n, length in ((3, 80), (2, 64), (1, 40)):
        net = _random_fast(n, length)
        for b in (1, 7, 256, 300):
            x = torch.rand(b, 2, n * length)
            x[0, :, length:] = 0  # a flow with one packet
            x.requires_grad_(True)
            (g,) = torch.autograd.grad(net._score(PaperCNN.embed(net.cnn, x)).sum(), x)
            want = g * (x.detach() - net.x_mean)
            got = net.attribution(x.detach())
            assert got.shape == want.shape
            assert (got - want).abs().max() <= 1e-5 * want.abs().max(), (n, length, b)


def test_scored_gives_scores_and_the_attributions_of_chosen_rows():
    torch.manual_seed(5)
    net = DPackNet(ModelConfig("fast", 3, 80, profile_dim=64))
    for prm in net.parameters():
        torch.nn.init.normal_(prm, std=0.3)
    for b in (5, 259):
        x = torch.rand(b, 2, 240)
        s, attr = net.scored(x)
        assert torch.equal(s, net.score(x))  # score's own forward pass: bit for bit
        rows = np.array([b - 1, 0, 2])
        want = net.attribution(x[torch.from_numpy(rows)])  # the chosen rows alone
        assert (attr(rows) - want).abs().max() <= 1e-5 * want.abs().max()


def test_a_flow_scores_the_same_whatever_its_batch(default_model):
    """Live batches are small and of any size, offline ones large: a flow's score and explanation must not
    depend on which (CPU kernels pick their blocking by the batch size: unpadded, a batch of one flow
    scored up to 1.5e-5 apart from the full batch, and the host-context stage's decision followed)."""
    from conftest import SAMPLE

    from dpack.prefix.flowset import extract
    from dpack.prefix.scorer import Scorer

    fs = extract([SAMPLE], default_model.spec)
    n = 200
    full = Scorer(default_model, explain="all", cache_size=0).verdicts_encoded(
        fs.samples[:n], fs.data[:n], fs.direction[:n]
    )
    for size in (1, 3, 7, 15, 17, 64):
        sc = Scorer(default_model, explain="all", cache_size=0)
        parts = []
        for a in range(0, n, size):
            b = min(a + size, n)
            parts += sc.verdicts_encoded(fs.samples[a:b], fs.data[a:b], fs.direction[a:b])
        assert [v.score for v in parts] == [v.score for v in full], size
        assert [v.explanation for v in parts] == [v.explanation for v in full], size

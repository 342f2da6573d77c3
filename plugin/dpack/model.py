"""The D-PACK networks: a 1-D CNN that profiles traffic and an autoencoder over the profiles.

Both architectures share one interface (``DPackNet``):
  * ``forward(x) -> (logits, profile)``: the CNN's profile-class logits and its profile vector;
  * ``score(x) -> (B,)``: the anomaly score, the autoencoder's reconstruction MSE of the (standardised)
    profile vector;
  * ``attribution(x) -> (B, N*L)``: how much each input byte pushed the score up (gradient x deviation
    from the mean benign input), for explanations.

Input ``x`` is (B, 2, N*L) float32: channel 0 the masked bytes scaled to [0, 1], channel 1 the direction of
the packet each byte belongs to (+1 initiator, -1 responder, 0 no packet), so padding is distinguishable
from real zero bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

ARCHS = ("paper", "fast")
# Gradients of the fast model by hand up to this many flows (live batches: serve.batch_size <= 256 by
# default), autograd through the convolutions above, where it is faster (4,096 flows: 123 vs 183 ms).
HAND_GRAD_MAX_BATCH = 256


@dataclass
class ModelConfig:
    arch: str = "fast"
    n_packets: int = 2
    n_bytes: int = 80
    # 25 profile classes as in the paper; dpack fills them with service groups (see profiles.py).
    n_classes: int = 25
    # paper: dense 1024 profile; fast: 256 (measured: 64 separates the classes but leaves thin margins).
    profile_dim: int = 1024

    def __post_init__(self) -> None:
        assert self.arch in ARCHS, f"arch must be one of {ARCHS}, got {self.arch!r}"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def to_input(data: np.ndarray, direction: np.ndarray) -> torch.Tensor:
    """Stack encoded flows into the network input: (B, N, L) uint8 + (B, N) int8 -> (B, 2, N*L) float32."""
    assert data.ndim == 3 and direction.shape == data.shape[:2], "data (B,N,L) and direction (B,N) expected"
    b, n, length = data.shape
    x = torch.empty((b, 2, n * length), dtype=torch.float32)
    x[:, 0] = torch.from_numpy(data.reshape(b, n * length)).float().mul_(1.0 / 255.0)  # (B, N*L)
    x[:, 1] = torch.from_numpy(direction).float().repeat_interleave(length, dim=1)  # (B, N*L)
    return x


class PaperCNN(nn.Module):
    """Conv1D 32x6 -> pool 2 -> Conv1D 64x6 -> pool 2 -> dense 1024 (profile) -> dense n_classes."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        length = cfg.n_packets * cfg.n_bytes
        self.conv = nn.Sequential(
            nn.Conv1d(2, 32, 6), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(32, 64, 6), nn.ReLU(), nn.MaxPool1d(2),
        )  # fmt: skip
        out_len = ((length - 5) // 2 - 5) // 2
        assert out_len > 0, f"input of {length} bytes is too short for the paper CNN"
        self.profile = nn.Sequential(nn.Flatten(), nn.Linear(64 * out_len, cfg.profile_dim), nn.ReLU())
        self.head = nn.Linear(cfg.profile_dim, cfg.n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.profile(self.conv(x))  # (B, profile_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.embed(x)
        return self.head(p), p


class FastCNN(PaperCNN):
    """Patch embedding (kernel = stride = 8 bytes) -> Conv1D 32x3 -> dense profile -> dense n_classes.

    The strided first layer reads each 8-byte chunk once instead of sliding over every byte; header
    fields are 1-4 bytes and mostly 2-byte aligned, so chunks lose little, and FLOPs drop ~50x.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        nn.Module.__init__(self)
        length = cfg.n_packets * cfg.n_bytes
        assert length % 8 == 0, f"fast arch needs N*L divisible by 8, got {length}"
        positions = length // 8
        self.conv = nn.Sequential(
            nn.Conv1d(2, 24, 8, stride=8), nn.ReLU(),
            nn.Conv1d(24, 32, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.profile = nn.Sequential(nn.Flatten(), nn.Linear(32 * positions, cfg.profile_dim), nn.ReLU())
        self.head = nn.Linear(cfg.profile_dim, cfg.n_classes)


def _autoencoder(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def ae_dims(cfg: ModelConfig) -> list[int]:
    d = cfg.profile_dim
    return [d, d // 2, d // 4, d // 2, d]  # paper: 1024-512-256-512-1024


class DPackNet(nn.Module):
    """CNN profiler + autoencoder; the anomaly score is the AE's reconstruction MSE of the profile."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.cnn: PaperCNN = PaperCNN(cfg) if cfg.arch == "paper" else FastCNN(cfg)
        self.ae = _autoencoder(ae_dims(cfg))
        length = cfg.n_packets * cfg.n_bytes
        # Standardisation of the profile vectors (fit on benign training flows) and the mean benign
        # input (the baseline for attributions). Buffers, so they live in the state dict.
        self.register_buffer("p_mean", torch.zeros(cfg.profile_dim))
        self.register_buffer("p_std", torch.ones(cfg.profile_dim))
        self.register_buffer("x_mean", torch.zeros(2, length))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cnn(x)

    def standardise(self, profile: torch.Tensor) -> torch.Tensor:
        return (profile - self.p_mean) / self.p_std

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2, N*L) -> (B,) reconstruction MSE of the standardised profile."""
        return self._score(self.cnn.embed(x))

    def _score(self, profile: torch.Tensor) -> torch.Tensor:
        z = self.standardise(profile)  # (B, profile_dim)
        return ((self.ae(z) - z) ** 2).mean(dim=1)

    def attribution(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2, N*L) -> (B, 2, N*L): gradient of the score times the input's deviation from the mean
        benign input; channel 0 per byte, channel 1 per byte of the direction channel."""
        if isinstance(self.cnn, FastCNN) and x.shape[0] <= HAND_GRAD_MAX_BATCH:
            with torch.no_grad():
                _, saved = self._fast_forward(x)
                return self._fast_backward(saved) * (x - self.x_mean)
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            s = self.score(x).sum()
            (g,) = torch.autograd.grad(s, x)
        return g * (x.detach() - self.x_mean)  # (B, 2, N*L)

    def scored(self, x: torch.Tensor) -> tuple[torch.Tensor, Callable[[np.ndarray], torch.Tensor]]:
        """Scores of ``x`` (``score``'s, bit for bit) and a function that gives the attributions of chosen
        rows (indices into x). For the ``fast`` model up to ``HAND_GRAD_MAX_BATCH`` flows both come from one
        forward pass and the backward pass runs for the chosen rows only: a flagged flow costs one forward
        pass, not two. Otherwise the attributions come from ``attribution``."""
        with torch.no_grad():
            if isinstance(self.cnn, FastCNN) and x.shape[0] <= HAND_GRAD_MAX_BATCH:
                s, saved = self._fast_forward(x)

                def attr(rows: np.ndarray) -> torch.Tensor:
                    idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
                    with torch.no_grad():
                        part = {k: v[idx] for k, v in saved.items()}
                        return self._fast_backward(part) * (x[idx] - self.x_mean)

                return s, attr
            return self.score(x), lambda rows: self.attribution(
                x[torch.from_numpy(np.asarray(rows, np.int64))]
            )

    # The fast model's score and its gradient by hand: live explanations are small batches, where
    # autograd's bookkeeping cost more than the arithmetic (one flow: ~590 us of ~1,100 us per verdict).
    # The forward pass runs the model's own modules, so its scores are ``score``'s, bit for bit; the
    # backward pass is the chain rule written out (a convolution's input gradient is the transposed
    # convolution with the same weights). Equal to autograd up to float rounding (tested).

    def _fast_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scores, per-row tensors the backward pass needs)."""
        c1, relu1, c2, relu2 = self.cnn.conv
        flatten, lin, relu3 = self.cnn.profile
        h1 = relu1(c1(x))  # (B, 24, P)
        a2 = c2(h1)  # (B, 32, P)
        a3 = lin(flatten(relu2(a2)))  # (B, D)
        z = self.standardise(relu3(a3))
        saved = {"h1": h1 > 0, "a2": a2 > 0, "a3": a3 > 0}
        h = z
        for i, m in enumerate(self.ae):
            h = m(h)
            if isinstance(m, nn.ReLU):
                saved[f"live{i}"] = h > 0
        saved["g_r"] = (h - z) * (2.0 / z.shape[1])  # d score / d reconstruction
        return ((h - z) ** 2).mean(dim=1), saved

    def _fast_backward(self, saved: dict[str, torch.Tensor]) -> torch.Tensor:
        """d score / d x for the rows in ``saved``: (B, 2, N*L)."""
        fn = nn.functional
        c1, _, c2, _ = self.cnn.conv
        lin = self.cnn.profile[1]
        g = g_r = saved["g_r"]
        for i in range(len(self.ae) - 1, -1, -1):
            m = self.ae[i]
            if isinstance(m, nn.Linear):
                g = g @ m.weight
            else:
                g = g * saved[f"live{i}"]
        g = (g - g_r) / self.p_std * saved["a3"]  # the score also reads z directly
        g = (g @ lin.weight).reshape(saved["a2"].shape) * saved["a2"]  # (B, 32, P)
        g = fn.conv_transpose1d(g, c2.weight, padding=c2.padding[0]) * saved["h1"]  # (B, 24, P)
        return fn.conv_transpose1d(g, c1.weight, stride=c1.stride[0])  # (B, 2, N*L)


def flops_per_flow(cfg: ModelConfig) -> int:
    """Multiply-accumulates x 2 for one flow's score (convolutions, dense layers, autoencoder)."""
    net = DPackNet(cfg)
    total = 0
    x = torch.zeros(1, 2, cfg.n_packets * cfg.n_bytes)

    def conv_hook(m: nn.Conv1d, _inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total
        total += 2 * out.shape[-1] * m.out_channels * m.in_channels * m.kernel_size[0]

    def lin_hook(m: nn.Linear, _inp: tuple[torch.Tensor], _out: torch.Tensor) -> None:
        nonlocal total
        if m is not net.cnn.head:  # the class head is not needed for scoring
            total += 2 * m.in_features * m.out_features

    hooks = []
    for m in net.modules():
        if isinstance(m, nn.Conv1d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    with torch.no_grad():
        net.score(x)
    for h in hooks:
        h.remove()
    return total

"""Early stopping shared by the record models' training loops."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass
class EarlyStopping:
    """Keeps the best weights by held-out loss; ``step`` returns True when training should stop."""

    patience: int
    min_delta: float = 1e-6
    best: float = float("inf")
    bad: int = 0
    state: dict[str, Any] | None = field(default=None, repr=False)

    def step(self, loss: float, net: nn.Module) -> bool:
        if loss < self.best - self.min_delta:
            self.best, self.bad = loss, 0
            self.state = {k: t.detach().clone() for k, t in net.state_dict().items()}
            return False
        self.bad += 1
        return self.bad >= self.patience

    def restore(self, net: nn.Module) -> None:
        if self.state is not None:
            net.load_state_dict(self.state)
        net.eval()

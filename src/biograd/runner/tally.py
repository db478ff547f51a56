"""Running sums of one epoch: loss, correct count, samples, seconds and every key of the rule's
``StepResult.metrics`` (epoch means become ``rule/KEY`` columns of metrics.csv).

The correct count may stay a device tensor while the epoch runs (no host sync per step on a
GPU); :meth:`Tally.state` turns everything into plain floats for a checkpoint, so a run
resumed mid-epoch continues the same sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

#: prefix of the metrics.csv columns (and TensorBoard tags) holding a rule's step metrics
METRIC_PREFIX = "rule/"


@dataclass
class Tally:
    """Sums over the steps of one epoch (and over the current alignment window)."""

    loss: float = 0.0  # sum of batch mean loss x batch size
    correct: float | Tensor = 0.0
    count: float = 0.0
    seconds: float = 0.0
    window_loss: float = 0.0  # since the last alignment row
    window_n: float = 0.0
    metric_sum: dict[str, float] = field(default_factory=dict)
    metric_n: dict[str, float] = field(default_factory=dict)

    def add(self, loss: float, correct: float | Tensor, count: int,
            metrics: dict[str, float]) -> None:
        """One training step: its mean loss, correct count, batch size and rule metrics."""
        self.loss += loss * count
        self.correct = self.correct + correct
        self.count += count
        self.window_loss += loss
        self.window_n += 1
        for key, value in metrics.items():
            self.metric_sum[key] = self.metric_sum.get(key, 0.0) + float(value)
            self.metric_n[key] = self.metric_n.get(key, 0.0) + 1

    def take_window(self) -> float:
        """Mean loss since the last call (the alignment row's ``train_loss``); resets it."""
        mean = self.window_loss / self.window_n if self.window_n else float("nan")
        self.window_loss = self.window_n = 0.0
        return mean

    def means(self) -> dict[str, float]:
        """The epoch's ``train_loss``, ``train_acc`` and ``rule/KEY`` means."""
        count = max(self.count, 1.0)
        out = {"train_loss": self.loss / count, "train_acc": float(self.correct) / count}
        out.update({METRIC_PREFIX + k: s / self.metric_n[k] for k, s in self.metric_sum.items()})
        return out

    def state(self, seconds: float = 0.0) -> dict[str, Any]:
        """Plain values for a checkpoint (``seconds`` added to the epoch's running time)."""
        return {"loss": self.loss, "correct": float(self.correct), "count": self.count,
                "seconds": self.seconds + seconds, "window_loss": self.window_loss,
                "window_n": self.window_n, "metric_sum": dict(self.metric_sum),
                "metric_n": dict(self.metric_n)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Tally:
        """A tally continuing a checkpoint's ``partial`` (older checkpoints lack the metrics)."""
        keys = ("loss", "correct", "count", "seconds", "window_loss", "window_n")
        return cls(**{k: float(state.get(k, 0.0)) for k in keys},
                   metric_sum=dict(state.get("metric_sum", {})),
                   metric_n=dict(state.get("metric_n", {})))

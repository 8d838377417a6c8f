"""A cheaper dropout for the LoRA branch on CPU: one 64-bit draw gives the masks of four elements.

`nn.Dropout` on a CPU draws one random number per element (`aten::bernoulli_`); on the quickstart that was 17%
of a LoRA training step, since peft applies a separate dropout to the input of each of the 7 adapted linears of
every block. Here the mask comes from the bits of full-range random int64s, cut into 16-bit lanes: an element is
dropped when its lane falls in the lowest `round(p * 65536)` of 65536 values, so the drop probability is p to
within 1/131072 (0.05 becomes 0.0500031) and the kept values are scaled by 1 / (1 - that probability), which keeps
the expectation exact. Same generator as torch (seeded by `set_seed`), same result in eval mode (identity).
"""

from __future__ import annotations

import torch
from torch import nn

LANES = 65536


class BitsDropout(nn.Module):
    """Drop-in for `nn.Dropout(p)` in training: same expectation, p rounded to a multiple of 1/65536."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.dropped = round(p * LANES)  # of 65536 lane values, how many drop the element
        self.scale = LANES / (LANES - self.dropped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropped == 0:
            return x
        return x * keep_mask(x.shape, self.dropped, x.device) * self.scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


def keep_mask(shape: torch.Size, dropped: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool mask of `shape`, each element False with probability dropped / 65536, independently."""
    count = 1
    for size in shape:
        count *= size
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    lanes = words.view(torch.int16)[:count].view(shape)  # uniform over [-32768, 32767]
    return lanes >= dropped - LANES // 2


def replace_lora_dropout(model: nn.Module) -> int:
    """Swap every `nn.Dropout` a peft LoRA/DoRA layer applies to its input for a BitsDropout; returns how many."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in list(dropouts.items()):
            if type(dropout) is nn.Dropout and dropout.p > 0:
                dropouts[name] = BitsDropout(dropout.p)
                replaced += 1
    return replaced

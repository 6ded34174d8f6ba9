"""Loss truncation, token level: SFT that drops the batch's highest-loss tokens, with no reference at all.

From the noisy-label literature (Kang & Hashimoto, "Improved Natural Language Generation via Loss Truncation",
ACL 2020, drop the highest-loss examples; here tokens, to compare with token-level forgetting): a wrong token is
surprising to the model being trained, so the top `truncation_fraction` of each batch's token CEs (ties broken by
position) get no gradient. The reference-free baseline a detector-based method has to beat.
"""

import math

import torch

from forgetune.objectives import register
from forgetune.objectives.base import Objective, masked_mean


@register("loss-truncation")
class LossTruncation(Objective):
    def __init__(self, fraction: float = 0.1):
        self.fraction = fraction

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.truncation_fraction)

    def __call__(self, ce, tokens, progress):
        dropped = math.floor(self.fraction * ce.numel())
        keep = torch.ones_like(ce, dtype=torch.bool)
        if dropped:
            keep[torch.topk(ce.detach(), dropped).indices] = False
        loss = masked_mean(ce, keep)
        return loss, {"ce_pos": loss.detach(), "tokens_pos": keep.sum(), "tokens_dropped": dropped}

"""Loss truncation, token level: SFT that drops the batch's highest-loss tokens, with no reference at all.

From the noisy-label literature (Kang & Hashimoto, "Improved Natural Language Generation via Loss Truncation",
ACL 2020, drop the highest-loss examples; here tokens, to compare with token-level forgetting): a wrong token is
surprising to the model being trained, so the top `truncation_fraction` of each batch's token CEs (ties broken by
position) get no gradient. The reference-free baseline a detector-based method has to beat.
"""

import math
from dataclasses import dataclass

import torch

from forgetune.errors import ForgetuneError
from forgetune.objectives import register
from forgetune.objectives.base import Objective, masked_mean
from forgetune.settings import Settings, option


@dataclass
class TruncationSettings(Settings):
    truncation_fraction: float = option(
        0.1, "Fraction of each batch's response tokens with the highest CE that get no gradient."
    )

    def validate(self):
        if not 0.0 <= self.truncation_fraction < 1.0:
            raise ForgetuneError(f"truncation_fraction must be in [0, 1), got {self.truncation_fraction}")


@register("loss-truncation")
class LossTruncation(Objective):
    Settings = TruncationSettings

    def __call__(self, ce, tokens, progress):
        dropped = math.floor(self.truncation_fraction * ce.numel())
        keep = torch.ones_like(ce, dtype=torch.bool)
        if dropped:
            keep[torch.topk(ce.detach(), dropped).indices] = False
        loss = masked_mean(ce, keep)
        return loss, {"ce_pos": loss.detach(), "tokens_pos": keep.sum(), "tokens_dropped": dropped}

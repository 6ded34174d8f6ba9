"""What every unlearning method receives: per-sequence NLLs of the forget (and retain) responses.

A sequence's NLL is the *sum* of its response tokens' CE (the same per-token CE the SFT objectives use), and its
length is the number of response tokens, so both sequence-level losses (NPO, SimNPO) and token means (GA,
GradDiff) can be formed. Token-level unlearning (forget some tokens of a response, keep the others) does not
add a field here: `UnlearnBatch.from_tokens` takes per-token forget weights and folds them into these sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch


def _sequence_sums(values: torch.Tensor, seq: torch.Tensor, count: int) -> torch.Tensor:
    return torch.zeros(count, dtype=values.dtype, device=values.device).index_add(0, seq, values)


@dataclass
class UnlearnBatch:
    """Per-sequence tensors; forget and retain sequences are separate, (B_f,) and (B_r,).

    forget_nll: summed response NLL of each forget sequence under the model being trained (carries the graph).
    forget_len: response tokens per forget sequence (float: fractional under token weights, see `from_tokens`).
    retain_nll, retain_len: the same for retain sequences; both or neither.
    forget_ref_nll: summed NLL of each forget sequence under the frozen reference model (NPO); no graph needed.
    """

    forget_nll: torch.Tensor
    forget_len: torch.Tensor
    retain_nll: torch.Tensor | None = None
    retain_len: torch.Tensor | None = None
    forget_ref_nll: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.forget_nll.dim() != 1 or self.forget_nll.shape != self.forget_len.shape:
            raise ValueError(
                f"forget_nll and forget_len must be (B_f,), got {tuple(self.forget_nll.shape)} "
                f"and {tuple(self.forget_len.shape)}"
            )
        if (self.retain_nll is None) != (self.retain_len is None):
            raise ValueError("give retain_nll and retain_len together, or neither")
        retain = self.retain_nll
        if retain is not None and (retain.dim() != 1 or retain.shape != self.retain_len.shape):
            raise ValueError(
                f"retain_nll and retain_len must be (B_r,), got {tuple(self.retain_nll.shape)} "
                f"and {tuple(self.retain_len.shape)}"
            )
        if self.forget_ref_nll is not None and self.forget_ref_nll.shape != self.forget_nll.shape:
            raise ValueError(
                f"forget_ref_nll must match forget_nll {tuple(self.forget_nll.shape)}, "
                f"got {tuple(self.forget_ref_nll.shape)}"
            )

    def forget_mean(self) -> torch.Tensor:
        """Per-token forget NLL: sum over the batch's forget tokens / their count."""
        return token_mean(self.forget_nll, self.forget_len)

    def retain_mean(self) -> torch.Tensor:
        """Per-token retain NLL (the usual SFT loss on the retain set)."""
        if self.retain_nll is None:
            raise ValueError(
                "this method has a retain term (retain_weight != 0) but the batch has no retain_nll; "
                "pass retain data or retain_weight=0"
            )
        return token_mean(self.retain_nll, self.retain_len)

    @classmethod
    def from_tokens(
        cls,
        forget_ce: torch.Tensor,
        forget_seq: torch.Tensor,
        forget_token_weight: torch.Tensor | None = None,
        forget_ref_ce: torch.Tensor | None = None,
        retain_ce: torch.Tensor | None = None,
        retain_seq: torch.Tensor | None = None,
    ) -> UnlearnBatch:
        """Build a batch from flat per-token CE (N,) and each token's sequence index (N,) in 0..B-1.

        Token-level unlearning: `forget_token_weight` (N,) in [0, 1], 1 = forget this token, 0 = keep it like
        retain data. A forget sequence then contributes sum(w * ce) with length sum(w) to the forget side (and
        sum(w * ref_ce) to its reference NLL, so NPO compares the same tokens), and sum((1 - w) * ce) with length
        sum(1 - w) as one extra retain sequence. Sequences with no weight on a side are left out of that side.
        """
        weight = torch.ones_like(forget_ce) if forget_token_weight is None else forget_token_weight.to(forget_ce)
        if weight.shape != forget_ce.shape or bool(((weight < 0) | (weight > 1)).any()):
            raise ValueError("forget_token_weight must have one entry in [0, 1] per forget token")
        count = int(forget_seq.max()) + 1
        forget_len = _sequence_sums(weight, forget_seq, count)
        kept_len = _sequence_sums(1 - weight, forget_seq, count)
        forget_rows, kept_rows = forget_len > 0, kept_len > 0
        if not bool(forget_rows.any()):
            raise ValueError("no forget token has a positive weight")
        forget_nll = _sequence_sums(weight * forget_ce, forget_seq, count)[forget_rows]
        ref = None
        if forget_ref_ce is not None:
            ref = _sequence_sums(weight * forget_ref_ce.to(forget_ce), forget_seq, count)[forget_rows]
        retain_nll, retain_len = [], []
        if retain_ce is not None:
            retain_count = int(retain_seq.max()) + 1
            retain_nll.append(_sequence_sums(retain_ce, retain_seq, retain_count))
            retain_len.append(_sequence_sums(torch.ones_like(retain_ce), retain_seq, retain_count))
        if bool(kept_rows.any()):
            retain_nll.append(_sequence_sums((1 - weight) * forget_ce, forget_seq, count)[kept_rows])
            retain_len.append(kept_len[kept_rows])
        return cls(
            forget_nll=forget_nll,
            forget_len=forget_len[forget_rows],
            retain_nll=torch.cat(retain_nll) if retain_nll else None,
            retain_len=torch.cat(retain_len) if retain_len else None,
            forget_ref_nll=ref,
        )


def token_mean(nll: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Sum of the sequences' NLL over their total token count: the per-token mean of the whole batch."""
    return nll.sum() / length.sum().clamp(min=1e-12)


class UnlearnMethod:
    """Forget term + `retain_weight` * per-token retain NLL; `__call__(batch, progress) -> (loss, metrics)`.

    forget_is_positive: the forget term is > 0 and reaches 0 only when forgetting is complete (NPO, SimNPO);
    `constrained` needs that, since it takes the forget term's log. GA's -NLL is not.
    """

    name: ClassVar[str] = ""
    forget_is_positive: ClassVar[bool] = False

    def __init__(self, retain_weight: float = 0.0):
        self.retain_weight = retain_weight

    def forget_term(self, batch: UnlearnBatch) -> torch.Tensor:
        """Scalar to minimise on the forget set; minimising it must push the forget NLL up."""
        raise NotImplementedError

    def __call__(self, batch: UnlearnBatch, progress: float = 0.0) -> tuple[torch.Tensor, dict[str, Any]]:
        forget = self.forget_term(batch)
        loss = forget
        if self.retain_weight:
            loss = loss + self.retain_weight * batch.retain_mean()
        metrics = {"forget_term": forget.item(), "forget_nll": batch.forget_mean().item()}
        if batch.retain_nll is not None:
            metrics["retain_nll"] = batch.retain_mean().item()
        metrics["loss"] = loss.item()
        return loss, metrics

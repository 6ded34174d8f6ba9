"""The one loss protocol: every SFT objective and every unlearning method is `loss(ce, tokens, progress)` over the flat
per-token CE of a batch's response tokens and their per-token labels; it returns (loss, metrics). Metrics may be
tensors: the trainer detaches them and turns them into numbers only when it logs (no sync per step)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from forgetune.errors import ForgetuneError
from forgetune.schedules import linear_ramp
from forgetune.settings import Settings, at_least, declared, one_of, option


@dataclass
class TokenBatch:
    """Flat (N,) tensors aligned with the CE vector: one entry per response token of the batch, in (row, position)
    order. Unlearning is forgetting where the polarity comes from the set a token's example belongs to (forget -1,
    retain +1) instead of from scores, so both kinds of loss read the same fields."""

    polarity: torch.Tensor | None = None  # +1 learn / retain, -1 forget, 0 ignored (partition, or forget/retain set)
    base_ce: torch.Tensor | None = None  # CE of the frozen starting model on the same token (scored once, up front)
    seq: torch.Tensor | None = None  # the row of the batch each token belongs to: sequence-level losses sum by it
    # With gradient accumulation, counts over every micro-batch of the optimiser step (COUNTS' keys), so that a loss
    # exact under accumulation divides its micro-batch's sums by the whole batch's counts: K micro-batches of B then
    # add up to the loss of one batch of K * B. None: each loss counts its own batch.
    totals: dict[str, torch.Tensor] | None = None

    def count(self, key: str) -> torch.Tensor | None:
        """The accumulated batch's count `key` (see COUNTS), or None: count this batch's own."""
        return None if self.totals is None else self.totals[key]

    def sequence_sums(self, values: torch.Tensor, select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of `values` over the selected tokens, their count) per sequence holding at least one of them."""
        weight = select.to(values.dtype)
        count = int(self.seq.max()) + 1 if self.seq.numel() else 0
        length = torch.zeros(count, dtype=values.dtype, device=values.device).index_add(0, self.seq, weight)
        sums = torch.zeros(count, dtype=values.dtype, device=values.device).index_add(0, self.seq, weight * values)
        rows = length > 0
        return sums[rows], length[rows]


# What `TokenBatch.totals` counts: response tokens, tokens by polarity, and sequences holding a -1 token.
COUNTS = ("tokens", "positive", "negative", "forget_sequences")


def batch_counts(labels_mask: torch.Tensor, polarity: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """COUNTS of one collated batch: `labels_mask` (B, T) marks its response tokens, `polarity` (B, T) or None."""
    out = {"tokens": labels_mask.sum()}
    pol = polarity if polarity is not None else torch.zeros_like(labels_mask, dtype=torch.long)
    out["positive"] = ((pol == 1) & labels_mask).sum()
    out["negative"] = ((pol == -1) & labels_mask).sum()
    out["forget_sequences"] = ((pol == -1) & labels_mask).any(dim=1).sum()
    return out


def masked_mean(values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the masked entries (their sum over `count` when given: the accumulated batch's); 0 (still attached
    to the graph) when none is selected."""
    count = mask.sum() if count is None else count
    return (values * mask).sum() / count.clamp(min=1)


class Objective:
    """Base class: `__call__(ce, tokens, progress) -> (loss, metrics)`; progress = step / total steps in [0, 1].

    Settings: a loss declares its knobs as `Settings` (a dataclass of `option(default, help)` fields with its own
    `validate`); they become flags and YAML keys of its config section, and `Objective(**settings)` checks them and
    sets each one as an attribute. A loss needing more at construction overrides `setup()`.

    Declared hooks the trainer reads instead of probing: `writes_gradients` (an update rule that is not a loss,
    explicit gradient surgery: it implements `backward(parameters, ce, tokens, progress) -> metrics`, writing `.grad`
    itself; the trainer then clips and applies it like any gradient) and `needs_parameters` (it is built with the
    trainable parameters, e.g. to penalise their distance from the start).

    `exact_under_accumulation`: the loss is a sum over tokens (or sequences) divided by a count, and divides by
    `tokens.count(...)` when given, so gradient accumulation equals one big batch. Others (a log of means, a per-batch
    top-k) are averaged over the micro-batches, as transformers does for any loss."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "objective"
    Settings: ClassVar[type[Settings]] = Settings
    needs_partition: ClassVar[bool] = False
    needs_base_ce: ClassVar[bool] = False
    writes_gradients: ClassVar[bool] = False
    needs_parameters: ClassVar[bool] = False
    exact_under_accumulation: ClassVar[bool] = False

    def __init__(self, **settings: Any):
        for key, value in dataclasses.asdict(declared(type(self), settings, self.kind)).items():
            setattr(self, key, value)
        self.setup()

    def setup(self) -> None:
        """Construction beyond setting the declared settings as attributes (none by default)."""

    @classmethod
    def setting_names(cls, **context: Any) -> set[str]:
        """The settings this loss takes (`context`: what a wrapper's settings depend on, e.g. its forget loss)."""
        return {f.name for f in dataclasses.fields(cls.Settings)}

    @classmethod
    def settings_for(cls, values: dict[str, Any], **context: Any) -> dict[str, Any]:
        """`values` checked and completed with the declared defaults: what the loss is built with."""
        return dataclasses.asdict(declared(cls, values, cls.kind))

    def __call__(self, ce: torch.Tensor, tokens: TokenBatch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def backward(self, parameters: list[torch.Tensor], ce: torch.Tensor, tokens: TokenBatch,
                 progress: float) -> dict[str, float]:
        raise NotImplementedError(f"{self.name} is a loss: the trainer calls it and backpropagates")


@dataclass
class PositiveNegativeSettings(Settings):
    lambda_max: float = option(0.25, "Final weight of the negative term (lambda ramps linearly over the run).")
    lambda_min: float = option(0.0, "Initial weight of the negative term.")
    negative_mean: str = option(
        "tokens", "Normaliser of the negative term: 'negatives' (mean over the batch's negatives, the paper's) or "
        "'tokens' (sum over negatives / all scored tokens: each negative weighs lambda times a positive)."
    )

    def validate(self) -> None:
        at_least("lambda_max", self.lambda_max)
        at_least("lambda_min", self.lambda_min)
        if self.lambda_min > self.lambda_max:
            raise ForgetuneError(f"lambda_min ({self.lambda_min}) must not exceed lambda_max ({self.lambda_max})")
        one_of("negative_mean", self.negative_mean, ("negatives", "tokens"))


class PositiveNegativeObjective(Objective):
    """Mean CE over positives plus lambda(t) times a negative term; subclasses define the negative term."""

    Settings = PositiveNegativeSettings
    needs_partition = True
    exact_under_accumulation = True

    def negative_term(self, ce: torch.Tensor, tokens: TokenBatch) -> torch.Tensor:
        """Per-token value to *add* (times lambda) for negative tokens."""
        raise NotImplementedError

    def __call__(self, ce, tokens, progress):
        pos, neg = tokens.polarity == 1, tokens.polarity == -1
        lam = linear_ramp(progress, self.lambda_min, self.lambda_max)
        pos_ce = masked_mean(ce, pos)
        neg_values = self.negative_term(ce, tokens)
        neg_term = masked_mean(neg_values, neg)
        if self.negative_mean == "tokens":
            # With few negatives (three-way split) the per-negative mean gives each one many times a positive's weight.
            scored = (pos | neg).sum() if tokens.totals is None else tokens.count("positive") + tokens.count("negative")
            loss = ((ce * pos).sum() + lam * (neg_values * neg).sum()) / scored.clamp(min=1)
        elif tokens.totals is None:
            loss = pos_ce + lam * neg_term
        else:
            loss = masked_mean(ce, pos, tokens.count("positive")) + lam * masked_mean(neg_values, neg,
                                                                                       tokens.count("negative"))
        return loss, {
            "ce_pos": pos_ce.detach(),
            "ce_neg": masked_mean(ce.detach(), neg),
            "neg_term": neg_term.detach(),
            "lambda": lam,
            "tokens_pos": pos.sum(),
            "tokens_neg": neg.sum(),
        }

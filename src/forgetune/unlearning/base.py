"""What every unlearning method receives: the SFT objectives' flat per-token tensors (`objectives.base.TokenBatch`).

Unlearning is forgetting where a token's polarity comes from the set its example belongs to: -1 on the forget set's
response tokens, +1 on the retain set's (with `--tokens scored`, a forget example's unselected tokens are +1 too:
kept like retain data). `base_ce` is the starting model's CE (NPO's frozen reference, scored once up front) and `seq`
the row each token belongs to, so sequence-level losses (NPO, SimNPO) form their per-sequence sums from it and token
means (GA, GradDiff) need nothing more.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from forgetune.errors import ForgetuneError
from forgetune.objectives.base import Objective, TokenBatch, masked_mean
from forgetune.settings import Settings, at_least, option


def forget_sequences(ce: torch.Tensor, tokens: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL, token count) of each sequence's forget tokens, for the sequences that have any."""
    forget = tokens.polarity == -1
    if not bool(forget.any()):
        raise ValueError("the batch has no forget token")
    return tokens.sequence_sums(ce, forget)


def forget_base_nll(ce: torch.Tensor, tokens: TokenBatch, method: str) -> torch.Tensor:
    """Summed NLL of each forget sequence's forget tokens under the frozen starting model (no graph)."""
    if tokens.base_ce is None:
        raise ValueError(f"{method} needs base_ce: the forget tokens' CE under the starting model")
    return tokens.sequence_sums(tokens.base_ce.to(ce).detach(), tokens.polarity == -1)[0]


def forget_mean(ce: torch.Tensor, tokens: TokenBatch) -> torch.Tensor:
    """Per-token forget NLL: the batch's forget tokens' summed CE over their count (the accumulated batch's, when
    given)."""
    nll, length = forget_sequences(ce, tokens)
    return token_mean(nll, length) if tokens.totals is None else nll.sum() / tokens.count("negative").clamp(min=1)


def retain_mean(ce: torch.Tensor, tokens: TokenBatch) -> torch.Tensor:
    """Per-token retain NLL (the usual SFT loss on the retain tokens)."""
    retain = tokens.polarity == 1
    if not bool(retain.any()):
        raise ValueError("this method has a retain term (retain_weight != 0) but the batch has no retain token; "
                         "pass retain data or retain_weight=0")
    nll, length = tokens.sequence_sums(ce, retain)
    return token_mean(nll, length) if tokens.totals is None else nll.sum() / tokens.count("positive").clamp(min=1)


def sequence_mean(values: torch.Tensor, tokens: TokenBatch) -> torch.Tensor:
    """Mean of per-forget-sequence values (over the accumulated batch's forget sequences, when given)."""
    return values.mean() if tokens.totals is None else values.sum() / tokens.count("forget_sequences").clamp(min=1)


def weighted_ascent(ce: torch.Tensor, tokens: TokenBatch, weight: torch.Tensor) -> torch.Tensor:
    """-(sum over the forget tokens of weight * CE) / their count: gradient ascent with a per-token weight that is a
    constant (no gradient flows through it; WGA, SatImp)."""
    forget = tokens.polarity == -1
    if not bool(forget.any()):
        raise ValueError("the batch has no forget token")
    return -masked_mean(weight.detach() * ce, forget, tokens.count("negative"))


def has_retain(tokens: TokenBatch) -> bool:
    return bool((tokens.polarity == 1).any())


def token_mean(nll: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Sum of the sequences' NLL over their total token count: the per-token mean of the whole batch."""
    return nll.sum() / length.sum().clamp(min=1e-12)


@dataclass
class RetainSettings(Settings):
    retain_weight: float = option(0.0, "Weight of the per-token retain NLL (0: none; open-unlearning's alpha).")

    def validate(self) -> None:
        at_least("retain_weight", self.retain_weight)


class UnlearnMethod(Objective):
    """Forget term + `retain_weight` * per-token retain NLL.

    forget_is_positive: the forget term is > 0 and reaches 0 only when forgetting is complete (NPO, SimNPO);
    `constrained` needs that, since it takes the forget term's log. GA's -NLL is not.
    """

    kind = "unlearning method"
    Settings = RetainSettings
    forget_is_positive: ClassVar[bool] = False
    exact_under_accumulation = True

    @property
    def uses_retain(self) -> bool:
        """Whether a batch needs retain tokens."""
        return self.retain_weight != 0

    def forget_term(self, ce: torch.Tensor, tokens: TokenBatch) -> torch.Tensor:
        """Scalar to minimise on the forget tokens; minimising it must push their NLL up."""
        raise NotImplementedError

    def __call__(self, ce: torch.Tensor, tokens: TokenBatch,
                 progress: float = 0.0) -> tuple[torch.Tensor, dict[str, Any]]:
        forget = self.forget_term(ce, tokens)
        loss = forget
        if self.retain_weight:
            loss = loss + self.retain_weight * retain_mean(ce, tokens)
        if tokens.totals is not None:  # the logged numbers: this micro-batch's own means, not its share of the step's
            return loss, self(ce.detach(), dataclasses.replace(tokens, totals=None), progress)[1]
        metrics = {"forget_term": forget.detach(), "forget_nll": forget_mean(ce, tokens).detach()}
        if has_retain(tokens):
            metrics["retain_nll"] = retain_mean(ce, tokens).detach()
        metrics["loss"] = loss.detach()
        return loss, metrics


class Wrapper(Objective):
    """A method around another method's forget term: `forget_loss` names the inner method, built with the settings
    the wrapper does not declare itself. `owns_retain`: the wrapper has its own retain term (the inner one's
    retain_weight is 0 then, and the wrapper's `retain_weight` setting is its own)."""

    kind = "unlearning method"
    default_forget_loss: ClassVar[str] = "npo"
    owns_retain: ClassVar[bool] = True

    def __init__(self, forget_loss: str | None = None, **settings: Any):
        inner, own, inner_settings = self._split(settings, forget_loss)
        self.forget = inner(**inner_settings)
        super().__init__(**own)

    @classmethod
    def _split(cls, settings: dict[str, Any], forget_loss: str | None) -> tuple[type, dict, dict]:
        """(the inner method, the wrapper's own settings, the inner method's); a setting of neither is an error."""
        from forgetune.unlearning import get

        inner = get(forget_loss or cls.default_forget_loss)
        own_names, accepted = {f.name for f in dataclasses.fields(cls.Settings)}, cls.setting_names(inner.name)
        unknown = sorted(set(settings) - accepted)
        if unknown:
            raise ForgetuneError(f"unlearning method {cls.name} with forget loss {inner.name} has no setting "
                                 f"{', '.join(unknown)} (its settings: {', '.join(sorted(accepted))})")
        inner_settings = {k: v for k, v in settings.items() if k not in own_names}
        if cls.owns_retain:
            inner_settings["retain_weight"] = 0.0
        return inner, {k: v for k, v in settings.items() if k in own_names}, inner_settings

    @classmethod
    def setting_names(cls, forget_loss: str | None = None, **context: Any) -> set[str]:
        from forgetune.unlearning import get

        inner = get(forget_loss or cls.default_forget_loss).setting_names()
        return super().setting_names() | (inner - {"retain_weight"} if cls.owns_retain else inner)

    @classmethod
    def settings_for(cls, values: dict[str, Any], forget_loss: str | None = None, **context: Any) -> dict[str, Any]:
        inner, own, inner_settings = cls._split(values, forget_loss)
        checked = inner.settings_for(inner_settings)
        if cls.owns_retain:
            del checked["retain_weight"]
        return checked | super().settings_for(own)

    @property
    def uses_retain(self) -> bool:
        return self.owns_retain or self.forget.uses_retain

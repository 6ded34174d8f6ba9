"""Machine-unlearning losses and update rules, registered by name (open-unlearning's vocabulary: forget / retain).

Adding a method = one file here with `@register("name")`. Every method is a loss of the SFT objectives' protocol,
`loss, metrics = method(ce, tokens, progress)` over flat per-token CE and a `TokenBatch` whose polarity is -1 on
forget tokens and +1 on retain tokens. `constrained-surgery` is an update rule instead (two backward passes), declared
with `writes_gradients`: `metrics = method.backward(parameters, ce, tokens, progress)` writes `.grad`.

    from forgetune import unlearning
    from forgetune.objectives import TokenBatch
    method = unlearning.build("npo", beta=0.1, retain_weight=1.0)  # the settings each method's file declares
    loss, metrics = method(ce, TokenBatch(polarity=polarity, base_ce=base_ce, seq=row_of_each_token), 0.3)
"""

from __future__ import annotations

from typing import Any

from forgetune.registry import Registry
from forgetune.unlearning.base import UnlearnMethod, token_mean

_registry = Registry(__name__, __path__, "unlearning method")
REGISTRY = _registry.classes
register = _registry.register
names = _registry.names
get = _registry.get


def build(name: str, **settings: Any) -> Any:
    """The method registered as `name` with its declared settings (its `Settings`; a wrapper also takes
    `forget_loss` and that method's settings, and `parameters` where it `needs_parameters`)."""
    return _registry.get(name)(**settings)


_registry.load_all()
from forgetune.unlearning.l1sparse import l1_penalty, prune  # noqa: E402
from forgetune.unlearning.surgery import apply_surgery, surgery_direction  # noqa: E402

__all__ = [
    "UnlearnMethod",
    "apply_surgery",
    "build",
    "get",
    "l1_penalty",
    "names",
    "prune",
    "register",
    "surgery_direction",
    "token_mean",
]

"""Machine-unlearning losses and update rules, registered by name (open-unlearning's vocabulary: forget / retain).

Adding a method = one file here with `@register("name")`. Every method reads an `UnlearnBatch` of per-sequence
NLLs, so it sits on the same per-token CE the SFT objectives use; losses are called as
`loss, metrics = method(batch, progress)`. `constrained-surgery` is an update rule instead (two backward passes):
`metrics = method.backward(parameters, batch)` writes `.grad`.

    from forgetune import unlearning
    method = unlearning.build("npo", beta=0.1, retain_weight=1.0)
    loss, metrics = method(unlearning.UnlearnBatch(forget_nll, forget_len, retain_nll, retain_len, ref_nll), 0.3)
"""

from __future__ import annotations

from typing import Any

from forgetune.registry import Registry
from forgetune.unlearning.base import UnlearnBatch, UnlearnMethod, token_mean

_registry = Registry(__name__, __path__, "unlearning method")
REGISTRY = _registry.classes
register = _registry.register
names = _registry.names
get = _registry.get


def build(name: str, **params: Any) -> Any:
    """The method registered as `name`, constructed with `params` (each method's `__init__` lists them)."""
    return _registry.get(name)(**params)


_registry.load_all()
from forgetune.unlearning.l1sparse import l1_penalty, prune  # noqa: E402
from forgetune.unlearning.surgery import apply_surgery, surgery_direction  # noqa: E402

__all__ = [
    "UnlearnBatch",
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

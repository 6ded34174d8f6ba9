"""Training objectives, registered by name. Adding one = one file here with `@register("name")`.

The trainer only calls `objective(ce, tokens, progress)`; it never branches on the objective's name.
"""

from __future__ import annotations

from forgetune.config import TrainConfig
from forgetune.objectives.base import Objective, TokenBatch
from forgetune.registry import Registry

_registry = Registry(__name__, __path__, "objective")
REGISTRY = _registry.classes
register = _registry.register
names = _registry.names


def build(cfg: TrainConfig) -> Objective:
    return _registry.get(cfg.objective).from_config(cfg)


__all__ = ["Objective", "TokenBatch", "build", "names", "register"]

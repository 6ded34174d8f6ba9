"""Training objectives, registered by name. Adding one = one file here with `@register("name")`.

The trainer only calls `objective(ce, tokens, progress)`; it never branches on the objective's name.
"""

from __future__ import annotations

import importlib
import pkgutil

from forgetune.config import TrainConfig
from forgetune.errors import ForgetuneError
from forgetune.objectives.base import Objective, TokenBatch

REGISTRY: dict[str, type[Objective]] = {}


def register(name: str):
    def wrap(cls: type[Objective]) -> type[Objective]:
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


def _import_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


def names() -> list[str]:
    _import_all()
    return sorted(REGISTRY)


def build(cfg: TrainConfig) -> Objective:
    _import_all()
    if cfg.objective not in REGISTRY:
        raise ForgetuneError(f"unknown objective {cfg.objective!r}; choose one of {', '.join(names())}")
    return REGISTRY[cfg.objective].from_config(cfg)


__all__ = ["Objective", "TokenBatch", "build", "names", "register"]

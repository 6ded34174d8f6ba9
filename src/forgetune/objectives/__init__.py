"""Training objectives, registered by name. Adding one = one file here with `@register("name")`.

The trainer only calls `objective(ce, tokens, progress)`; it never branches on the objective's name.
"""

from __future__ import annotations

from typing import Any

from forgetune.objectives.base import Objective, TokenBatch
from forgetune.registry import Registry

_registry = Registry(__name__, __path__, "objective")
REGISTRY = _registry.classes
register = _registry.register
names = _registry.names
get = _registry.get


def build(name: str, settings: dict[str, Any] | None = None) -> Objective:
    """The objective registered as `name` with its declared settings (`settings`; defaults for the rest)."""
    return _registry.get(name)(**(settings or {}))


__all__ = ["Objective", "TokenBatch", "build", "get", "names", "register"]

"""Name -> class registries for plug-in packages (objectives, unlearning methods): one file, one `@register`."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable

from forgetune.errors import ForgetuneError


class Registry:
    """Classes registered by name in a package; its modules are imported on first lookup, so adding a method is
    adding a file, and nothing else names it."""

    def __init__(self, package: str, path: Iterable[str], kind: str):
        self.package, self.path, self.kind = package, path, kind
        self.classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        def wrap(cls: type) -> type:
            cls.name = name
            self.classes[name] = cls
            return cls

        return wrap

    def load_all(self) -> None:
        for module in pkgutil.iter_modules(self.path):
            if module.name != "base":
                importlib.import_module(f"{self.package}.{module.name}")

    def names(self) -> list[str]:
        self.load_all()
        return sorted(self.classes)

    def get(self, name: str) -> type:
        self.load_all()
        if name not in self.classes:
            raise ForgetuneError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}")
        return self.classes[name]

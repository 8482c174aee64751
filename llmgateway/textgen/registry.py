"""A registry of formats: one module per format in a package, each defining `FORMAT`.

Shared by the tool-call formats (tools/) and the reasoning formats (reasoning/): a new
format is a new module, found by name, listed as a ModelConfig field's choices.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cached_property
from types import ModuleType
from typing import Any, Generic, TypeVar

F = TypeVar("F")


class FormatRegistry(Generic[F]):
    """The formats of `package`, imported on first use (not at start-up)."""

    def __init__(self, package: ModuleType, kind: str) -> None:
        self.package = package
        self.kind = kind

    @cached_property
    def _found(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for module_info in pkgutil.iter_modules(self.package.__path__):
            module = importlib.import_module(f"{self.package.__name__}.{module_info.name}")
            found[module.FORMAT.name] = module.FORMAT
        return found

    def forget(self) -> None:
        """Look the package's modules up again on next use (a module added since)."""
        self.__dict__.pop("_found", None)

    def get(self, name: str) -> F:
        """The format called `name`; LookupError for one no module defines."""
        try:
            return self._found[name]
        except KeyError:
            raise LookupError(f"no {self.kind} format is called {name!r}") from None

    def choices(self) -> list[tuple[str, str]]:
        """(name, label) of every format, for a ModelConfig field's choices."""
        return [(name, f.label) for name, f in sorted(self._found.items())]

"""A tiny registry: names to builders, a duplicate name raises (torchvision ``models/_api.py`` style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_generation = 0  # bumped by every registration: parsers whose choices come from registries are cached on it


def generation() -> int:
    """How many names all registries have gained in this process (built-ins and plug-ins alike)."""
    return _generation


class Registry(Generic[T]):
    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            global _generation
            self._items[name] = obj
            _generation += 1
            return obj

        return wrap

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ValueError(f"unknown {self.what} {name!r}; choose one of: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

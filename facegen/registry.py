"""Explicit registries by name (detectors, landmarkers, identity encoders, presets, …)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from facegen.errors import UnknownNameError

T = TypeVar("T")

__all__ = ["Registry", "RegistryEntry"]


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    name: str
    factory: Callable[..., T]
    description: str = ""


class Registry(Generic[T]):
    """A name → factory map. An unknown name raises :class:`UnknownNameError` listing valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, RegistryEntry[T]] = {}

    def register(
        self, name: str, factory: Callable[..., T] | None = None, *, description: str = ""
    ) -> Callable[..., T] | Callable[[Callable[..., T]], Callable[..., T]]:
        """Register ``factory`` under ``name``; usable as a decorator when ``factory`` is omitted."""

        def _add(f: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = RegistryEntry(name, f, description)
            return f

        return _add(factory) if factory is not None else _add

    def get(self, name: str) -> RegistryEntry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

    def create(self, name: str, /, **kwargs: object) -> T:
        """Build the object registered as ``name`` with ``kwargs``."""
        return self.get(name).factory(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[RegistryEntry[T]]:
        return iter(self._entries[n] for n in self.names())

"""One registry type for every named family of the engine (generators, ratio estimators,
methods, presets, datasets): names to entries, and the one error for an unknown name.

A leaf: imports nothing of the package, so any module can hold a registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(ValueError):
    """A name that is not in a registry; the message lists the valid names."""


class Registry(Generic[T]):
    """Entries of one kind by name.

    Args:
        kind: what the entries are, for the error message ("Bregman generator", "method").
        entries: the initial entries.
        error: the exception class raised for an unknown name (a subclass of ``ValueError``
            where a layer has its own, e.g. ``ConfigError``).
    """

    def __init__(self, kind: str, entries: dict[str, T] | None = None,
                 error: type[ValueError] = UnknownName) -> None:
        self.kind, self.error = kind, error
        self._entries: dict[str, T] = dict(entries or {})

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name`` (a name is registered once) and return it."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.error(f"unknown {self.kind} {name!r}; "
                             f"valid: {', '.join(self.names())}") from None

    def get(self, name: str, default: T | None = None) -> T | None:
        """The entry named ``name``, or ``default``."""
        return self._entries.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs in name order."""
        return [(name, self._entries[name]) for name in self.names()]

    def names(self) -> list[str]:
        """The sorted names."""
        return sorted(self._entries)

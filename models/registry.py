"""Name -> class registries for the pluggable model parts (frame nets, sound nets, fusion heads).

Adding a part is one class plus one decorator line::

    @FUSION_HEADS.register("my_head")
    class MyHead(FusionHead):
        ...
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class UnknownNameError(KeyError, ValueError):
    """Raised for a name that is not registered; both a KeyError (lookup) and a ValueError (bad flag)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A mapping from names to classes, filled by the ``register`` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator that registers the class under ``name``; a name can be taken only once."""

        def decorator(cls: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered ({self._entries[name]!r})")
            self._entries[name] = cls
            return cls

        return decorator

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its class (for tests and plug-ins that clean up)."""
        self.get(name)
        return self._entries.pop(name)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} '{name}'; available: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


FRAME_NETS: Registry[type] = Registry("frame net")
SOUND_NETS: Registry[type] = Registry("sound net")
FUSION_HEADS: Registry[type] = Registry("fusion head")

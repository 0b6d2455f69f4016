"""Name -> builder registries (as in timm): `@register_model("mlp")` instead of if-chains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name that is not registered; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateNameError(ValueError):
    """A name registered by two modules."""


class Registry(Generic[T]):
    """A dict of builders filled by a decorator, with errors that list the valid names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._owners: dict[str, str] = {}  # name -> the module that registered it

    def register(self, name: str, owner: str | None = None) -> Callable[[T], T]:
        """A decorator registering its argument as `name`; `owner` (default: the decorated
        function's module) is named when another module registers the same name."""

        def decorator(fn: T) -> T:
            module = owner or getattr(fn, "__module__", None) or "?"
            if name in self._entries:
                raise DuplicateNameError(
                    f"{self.kind} {name!r} is registered twice: by {self._owners[name]} and by "
                    f"{module}; rename one of them"
                )
            self._entries[name] = fn
            self._owners[name] = module
            return fn

        return decorator

    def forget(self, owner: str) -> None:
        """Drop every entry `owner` registered (a plug-in module about to be imported again)."""
        for name in [n for n, o in self._owners.items() if o == owner]:
            del self._entries[name], self._owners[name]

    def owner(self, name: str) -> str:
        return self._owners[name]

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

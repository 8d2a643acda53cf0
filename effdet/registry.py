"""Name → builder maps for every pluggable kind (backbones, fusion methods, run modes, ...)."""
import contextlib
from typing import Callable, Dict, Iterator, List, TypeVar

from effdet.errors import ConfigError, unknown_name_message

T = TypeVar("T")


class Registry:
    """A named table of builders.

    Registering a name twice is a programming error; asking for an unknown name is a user error that
    lists the valid names and suggests the closest one.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(
                    f"{self.kind} '{name}' is registered twice: by {self._entries[name]!r} and {obj!r}"
                )
            self._entries[name] = obj
            return obj

        return add

    @contextlib.contextmanager
    def temporarily(self, name: str, obj: T) -> Iterator[T]:
        """`obj` registered as `name` inside a `with` block only: for tests that plug in a stand-in (an engine
        that returns known outputs, say) and must not leave it behind for the next test. The code registers with
        `register`, whose entries stay."""
        self.register(name)(obj)
        try:
            yield obj
        finally:
            del self._entries[name]

    def get(self, name: str, where: str = "") -> Callable:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(unknown_name_message(self.kind, name, self._entries, where)) from None

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"

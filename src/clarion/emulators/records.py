"""Bounded memory for the emulators: what they received, and what they remember to behave.

Tests read everything an emulator received, so by default nothing is forgotten. Inside a
long-running `clarion serve --sandbox` that would grow without bound, so every emulator takes
`keep`: how many of the latest records of each kind it keeps (None: all). `Records` is a record
list bounded that way; `Recent` is a map bounded the same way, for state an emulator needs in
order to answer correctly (ids already seen, tokens already verified).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Generic, SupportsIndex, TypeVar, overload

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


def check_keep(keep: int | None) -> int | None:
    """`keep` itself, once it is None or a count."""
    if keep is not None and keep < 0:
        raise ValueError(f"keep must be None or at least 0, not {keep}")
    return keep


class Records(deque[T]):
    """Records, oldest first: the latest `maxlen` of them (all when None).

    A deque, so that appending past the bound forgets the oldest in O(1). It also compares
    equal to a list with the same items and slices like a list, because that is how tests
    read records (`emulator.received == []`, `emulator.accepted[since:]`).
    """

    @overload
    def __getitem__(self, index: SupportsIndex) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: SupportsIndex | slice) -> T | list[T]:
        if isinstance(index, slice):
            return list(self)[index]
        return super().__getitem__(index)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, list):
            return list(self) == other
        return super().__eq__(other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # mutable, like list and deque


class Recent(Generic[K, V]):
    """A map that forgets its least recently set entries beyond `keep` (None: never)."""

    def __init__(self, keep: int | None) -> None:
        self.keep = check_keep(keep)
        self._items: OrderedDict[K, V] = OrderedDict()

    def __setitem__(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if self.keep is not None:
            while len(self._items) > self.keep:
                self._items.popitem(last=False)

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

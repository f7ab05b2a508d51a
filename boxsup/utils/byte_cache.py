"""A cache bounded in bytes that keeps what it holds once full.

The label update visits the same images in the same order every round. Dropping the least recently
used entry to make room would drop exactly the one needed next and miss on every image; keeping
the entries that fitted first makes the share that fits hit every round.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


V = TypeVar("V", bound=Sized)


class ByteBudgetCache(Generic[V]):
    """Values with an ``nbytes`` by key, never more than ``max_bytes`` in all; once full, new ones are not kept."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.nbytes = 0  # bytes of the values held
        self.items: dict[str, V] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, key: str) -> bool:
        return key in self.items

    def get(self, key: str) -> V | None:
        return self.items.get(key)

    def put(self, key: str, value: V) -> None:
        """Keep ``value`` (replacing the key's earlier one) if it fits in what the budget has left."""
        if key in self.items:
            self.nbytes -= self.items.pop(key).nbytes
        if self.nbytes + value.nbytes <= self.max_bytes:
            self.items[key] = value
            self.nbytes += value.nbytes

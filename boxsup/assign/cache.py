"""BoxedPoolCache: each image's box-refined candidate pool, built once from the proposal store."""

from __future__ import annotations


from boxsup.assign.assign import BoxedPool
from boxsup.data.annotations import ImageAnnotation
from boxsup.proposals.store import ProposalStore

MB = 1 << 20  # ``assign.cache_mb`` and the ``assign_cache_mb`` metric count MiB


class BoxedPoolCache:
    """Pools and their E_o never change during a run, so later rounds only pay for E_r.

    The pools held never sum to more than ``max_bytes`` (``BoxedPool.nbytes``). Once the budget is
    full, a new pool is used but not kept, and nothing is dropped for it: a round visits an actor's
    images in the same order every time, so dropping the least recently used would drop exactly the
    pool needed next and miss on every image; keeping what is held makes the share of a shard that
    fits hit every round.
    """

    def __init__(self, store: ProposalStore, max_bytes: int = 2048 * MB):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.store = store
        self.max_bytes = max_bytes
        self.nbytes = 0  # bytes of the pools held
        self._pools: dict[str, BoxedPool] = {}

    def __len__(self) -> int:
        return len(self._pools)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._pools

    def get(self, ann: ImageAnnotation) -> BoxedPool:
        """The image's pool refined by its boxes; a pool of another size than the image is a BoxSupError."""
        pool = self._pools.get(ann.image_id)
        if pool is not None:
            return pool
        candidates = self.store.load(ann.image_id, expected_shape=(ann.height, ann.width))
        pool = BoxedPool.build(candidates, ann.boxes_array(), ann.labels_array())
        self.put(ann.image_id, pool)
        return pool

    def put(self, image_id: str, pool: BoxedPool) -> None:
        """Keep ``pool`` (replacing the image's earlier one) if it fits in what the budget has left."""
        if image_id in self._pools:
            self.nbytes -= self._pools.pop(image_id).nbytes
        size = pool.nbytes
        if self.nbytes + size <= self.max_bytes:
            self._pools[image_id] = pool
            self.nbytes += size

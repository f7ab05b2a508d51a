"""BoxedPoolCache: each image's box-refined candidate pool, built once from the proposal store."""

from __future__ import annotations

from collections import OrderedDict

from boxsup.assign.assign import BoxedPool
from boxsup.data.annotations import ImageAnnotation
from boxsup.proposals.store import ProposalStore

MB = 1 << 20  # ``assign.cache_mb`` and the ``assign_cache_mb`` metric count MiB


class BoxedPoolCache:
    """Pools and their E_o never change during a run, so later rounds only pay for E_r.

    The pools held never sum to more than ``max_bytes`` (``BoxedPool.nbytes``): the least recently
    used are dropped to make room, and a pool larger than the whole budget is used but not kept.
    """

    def __init__(self, store: ProposalStore, max_bytes: int = 2048 * MB):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.store = store
        self.max_bytes = max_bytes
        self.nbytes = 0  # bytes of the pools held
        self._pools: OrderedDict[str, BoxedPool] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pools)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._pools

    def get(self, ann: ImageAnnotation) -> BoxedPool:
        """The image's pool refined by its boxes; a pool of another size than the image is a BoxSupError."""
        pool = self._pools.get(ann.image_id)
        if pool is not None:
            self._pools.move_to_end(ann.image_id)
            return pool
        candidates = self.store.load(ann.image_id, expected_shape=(ann.height, ann.width))
        pool = BoxedPool.build(candidates, ann.boxes_array(), ann.labels_array())
        self.put(ann.image_id, pool)
        return pool

    def put(self, image_id: str, pool: BoxedPool) -> None:
        """Keep ``pool`` as the most recently used, dropping the least recently used until all fit."""
        if image_id in self._pools:
            self.nbytes -= self._pools.pop(image_id).nbytes
        size = pool.nbytes
        if size > self.max_bytes:
            return
        while self.nbytes + size > self.max_bytes:
            self.nbytes -= self._pools.popitem(last=False)[1].nbytes
        self._pools[image_id] = pool
        self.nbytes += size

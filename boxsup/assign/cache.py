"""BoxedPoolCache: each image's box-refined candidate pool, built once from the proposal store."""

from __future__ import annotations

from collections import OrderedDict

from boxsup.assign.assign import BoxedPool
from boxsup.data.annotations import ImageAnnotation
from boxsup.proposals.store import ProposalStore


class BoxedPoolCache:
    """Pools and their E_o never change during a run, so later rounds only pay for E_r.

    At most ``capacity`` images are kept (least recently used dropped) to bound memory on large
    datasets; an actor owning a shard of VOC (10k images / actors) keeps its whole shard by default.
    """

    def __init__(self, store: ProposalStore, capacity: int = 4096):
        self.store = store
        self.capacity = capacity
        self._pools: OrderedDict[str, BoxedPool] = OrderedDict()

    def get(self, ann: ImageAnnotation) -> BoxedPool:
        """The image's pool refined by its boxes; a pool of another size than the image is a BoxSupError."""
        pool = self._pools.pop(ann.image_id, None)
        if pool is None:
            candidates = self.store.load(ann.image_id, expected_shape=(ann.height, ann.width))
            pool = BoxedPool.build(candidates, ann.boxes_array(), ann.labels_array())
        self._pools[ann.image_id] = pool
        if len(self._pools) > self.capacity:
            self._pools.popitem(last=False)
        return pool

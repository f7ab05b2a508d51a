"""BoxedPoolCache: each image's box-refined candidate pool, built once from the proposal store."""

from __future__ import annotations

from boxsup.assign.assign import BoxedPool
from boxsup.data.annotations import ImageAnnotation
from boxsup.proposals.store import ProposalStore
from boxsup.utils.byte_cache import ByteBudgetCache

MB = 1 << 20  # ``assign.cache_mb`` and the ``assign_cache_mb`` metric count MiB


class BoxedPoolCache:
    """Pools and their E_o (and E_c) never change during a run, so later rounds only pay for E_r.

    The pools held never sum to more than ``max_bytes`` (``BoxedPool.nbytes``); once the budget is
    full, a new pool is used but not kept (``ByteBudgetCache`` says why).
    """

    def __init__(self, store: ProposalStore, max_bytes: int = 2048 * MB, consensus_margin: float | None = None):
        self.store = store
        self.consensus_margin = consensus_margin  # pools keep E_c at this margin (None: the run has no E_c)
        self._kept: ByteBudgetCache[BoxedPool] = ByteBudgetCache(max_bytes)

    @property
    def max_bytes(self) -> int:
        return self._kept.max_bytes

    @property
    def nbytes(self) -> int:
        """Bytes of the pools held."""
        return self._kept.nbytes

    @property
    def _pools(self) -> dict[str, BoxedPool]:
        return self._kept.items

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._kept

    def get(self, ann: ImageAnnotation) -> BoxedPool:
        """The image's pool refined by its boxes; a pool of another size than the image is a BoxSupError."""
        pool = self._kept.get(ann.image_id)
        if pool is None:
            candidates = self.store.load(ann.image_id, expected_shape=(ann.height, ann.width))
            pool = BoxedPool.build(candidates, ann.boxes_array(), ann.labels_array(), self.consensus_margin)
            self._kept.put(ann.image_id, pool)
        return pool

    def put(self, image_id: str, pool: BoxedPool) -> None:
        """Keep ``pool`` (replacing the image's earlier one) if it fits in what the budget has left."""
        self._kept.put(image_id, pool)

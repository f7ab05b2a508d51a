"""Where a training loop runs: one process (``LocalContext``) or a Ray Train worker (``RayTrainContext``).

The loop in ``boxsup.trainers.loop`` talks only to this interface: its rank and world size, its
device, collectives on numpy arrays, DDP wrapping, reporting a checkpoint directory and loading
the last one back.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


class LocalContext:
    """A single process; checkpoints go to ``<run dir>/checkpoints/latest``."""

    rank = 0
    world = 1

    def __init__(self, run_dir: Path, device: torch.device):
        self.run_dir = Path(run_dir)
        self.device = device

    def all_reduce(self, array: np.ndarray) -> np.ndarray:
        return array

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        pass

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def load_checkpoint(self) -> dict[str, Any] | None:
        path = self.run_dir / "checkpoints" / "latest" / "state.pt"
        return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is None:
            return
        target = self.run_dir / "checkpoints" / "latest"
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
        shutil.copytree(checkpoint_dir, staging, dirs_exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)


class RayTrainContext:
    """Inside ``TorchTrainer``: torch.distributed collectives, Ray Train checkpoints."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world = context.get_world_size()
        self.device = ray.train.torch.get_device()

    def _tensor_device(self) -> torch.device:
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "gloo"
        return self.device if backend == "nccl" else torch.device("cpu")

    def all_reduce(self, array: np.ndarray) -> np.ndarray:
        if self.world == 1:
            return array
        tensor = torch.as_tensor(np.ascontiguousarray(array, dtype=np.float64), device=self._tensor_device())
        torch.distributed.all_reduce(tensor)
        return tensor.cpu().numpy()

    def all_gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=False)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The state of the last reported checkpoint: after a worker failure, or on --resume."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return torch.load(Path(directory) / "state.pt", map_location="cpu", weights_only=False)

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

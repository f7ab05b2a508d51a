"""Where a training loop runs: one process (``LocalContext``) or a Ray Train worker (``RayTrainContext``).

The loop in ``boxsup.trainers.loop`` talks only to this interface: its rank and world size, its
device, collectives on numpy arrays, DDP wrapping, reporting a checkpoint directory and loading
the last one back. Checkpoints hold tensors and plain types only and load with ``weights_only=True``:
nothing in a checkpoint file can run code.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from boxsup.models import load_tensor_file
from boxsup.utils.storage import open_location


class LocalContext:
    """A single process; checkpoints go to ``<run dir>/checkpoints/latest`` (a local path or a URI)."""

    rank = 0
    world = 1

    def __init__(self, run_dir: str | Path, device: torch.device, report_to_tune: bool = False):
        self.run_dir = open_location(run_dir)
        self.device = device
        self.report_to_tune = report_to_tune  # inside a Ray Tune trial: every report goes on to Tune

    def all_reduce(self, array: np.ndarray) -> np.ndarray:
        return array

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        pass

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        pass

    def load_checkpoint(self) -> dict[str, Any] | None:
        try:
            data = self.run_dir.read_bytes("checkpoints/latest/state.pt")
        except FileNotFoundError:
            return None
        return load_tensor_file(io.BytesIO(data), str(self.run_dir.path("checkpoints/latest/state.pt")), "training state")

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if self.report_to_tune:
            import ray.tune

            ray.tune.report(metrics)
        if checkpoint_dir is None:
            return
        for file in sorted(Path(checkpoint_dir).iterdir()):  # state.pt: each file replaced atomically
            self.run_dir.upload(file, f"checkpoints/latest/{file.name}")


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

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics), the ones its checkpoint holds.

        DDP leaves each rank with statistics of its own last batch; a rank restarted from rank 0's
        checkpoint would otherwise label and evaluate with other numbers than an uninterrupted one.
        """
        if self.world == 1:
            return
        for buffer in model.buffers():
            if buffer.is_floating_point() or buffer.dtype in (torch.int64, torch.int32):
                moved = buffer.data.to(self._tensor_device())
                torch.distributed.broadcast(moved, src=0)
                buffer.data.copy_(moved)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The state of the last reported checkpoint: after a worker failure, or on --resume."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_tensor_file(Path(directory) / "state.pt", f"{checkpoint.path}/state.pt", "training state")

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

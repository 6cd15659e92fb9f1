"""The torch engine under torch.distributed: DDP or FSDP2, with one skip decision for every rank.

Usage (inside a process that torch's elastic launcher started; ``mpcourse train --nproc 2``
does that)::

    from mpcourse.engines.torch import distributed as D

    D.init_distributed("cpu")                         # gloo on CPU, nccl on CUDA
    cfg = mpc.TrainConfig(precision="fp16", batch_size=64)   # 64 = the GLOBAL batch
    eng = D.DistributedTorchEngine("mlp", cfg, strategy="fsdp", reduce_dtype="fp32")
    eng.fit(mpc.data.load("digits"), steps=20)        # each rank trains on its part of a batch
    save_distributed(eng, "run/step_000020")          # engines/torch/sharded_checkpoint.py
    eng.state_dict()                                  # full (gathered) tensors, as one process saves

What changes against one process:

- **Data.** Every rank walks the same data order (it depends on seed and epoch only) and takes
  its own slice of each global batch; the loss is weighted so that the average over ranks is
  the mean over the global batch, as one process computes it.
- **Gradients.** ``"ddp"``: ``DistributedDataParallel`` all-reduces (averages) full gradients,
  in fp32 or, with ``reduce_dtype``, in bf16/fp16 through :func:`cast_reduce_hook`. ``"fsdp"``: FSDP2
  ``fully_shard`` with ``MixedPrecisionPolicy(param_dtype, reduce_dtype)``: each rank keeps one
  shard of the fp32 master weights, of the gradients and of the optimizer state.
- **One verdict.** A step is skipped on every rank when any rank found inf/nan, so the
  parameters and the scale stay identical everywhere. DDP's averaged gradients would carry an
  inf to every rank, but a gradient that turns non-finite after the reduction (a drill, or a
  bug) would not: the engine therefore reduces the flag itself. With ``"ddp"`` the scaler is
  :class:`~torch.distributed.fsdp.sharded_grad_scaler.ShardedGradScaler` (torch's GradScaler
  plus an all-reduce of ``found_inf``); with ``"fsdp"`` it is ``torch.amp.GradScaler``, whose
  check on DTensor gradients is max-reduced over the mesh by DTensor itself; mpcourse's own
  scalers all-reduce their flag here. ``agree_found_inf=False`` turns the DDP all-reduce off,
  to show what goes wrong.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

from mpcourse._validate import check_choice, int_at_least
from mpcourse.config import TrainConfig
from mpcourse.engines.torch.engine import DTYPES, TorchEngine
from mpcourse.engines.torch.scaling import GradScalerScaling, OwnScaling, TorchScaling, make_scaling
from mpcourse.fingerprint import sha256_arrays

__all__ = [
    "STRATEGIES",
    "DistributedTorchEngine",
    "init_distributed",
    "shutdown_distributed",
    "comm_backend",
    "elastic_run",
    "local_bytes",
    "model_sha256",
]

STRATEGIES = ("ddp", "fsdp")


def comm_backend(device_type: str) -> str:
    """The process-group backend for a device type: ``"nccl"`` on CUDA, ``"gloo"`` elsewhere."""
    return "nccl" if device_type == "cuda" else "gloo"


def init_distributed(device: str = "cpu") -> tuple[int, int]:
    """Join the process group the launcher described in the environment; returns (rank, world size).

    Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` (torch's elastic launcher
    sets them). On CUDA, binds this process to GPU ``LOCAL_RANK`` first.
    """
    device_type = torch.device(device).type if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=comm_backend(device_type))
    return dist.get_rank(), dist.get_world_size()


def shutdown_distributed() -> None:
    """Leave the process group (a no-op when there is none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def elastic_run(
    fn: Callable[..., Any], args: tuple[Any, ...], nproc: int, start_method: str = "spawn"
) -> dict[int, Any]:
    """Run ``fn(*args)`` in ``nproc`` fresh processes with torch's elastic launcher (torchrun's engine).

    The rendezvous is torchrun's ``--standalone`` one: a c10d store on ``localhost:0``, so the
    operating system picks a free port and two runs at once never clash. ``fn`` must be a
    module-level function (spawned workers import it). ``start_method="fork"`` skips the seconds
    each spawned worker spends importing torch; use it only from a fresh process that has run
    no torch op and made no CUDA context (the ``mpcourse train`` command), never from a notebook.
    Returns each rank's return value.
    """
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    int_at_least("nproc", nproc, 1)
    check_choice("start_method", start_method, ("spawn", "fork", "forkserver"))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"mpcourse-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method=start_method,
    )
    return dict(elastic_launch(config, fn)(*args))


# --- one verdict for every rank ------------------------------------------------------------------
class ShardedGradScalerScaling(GradScalerScaling):
    """GradScaler's recipe, from ``ShardedGradScaler``: the same steps plus an all-reduce of ``found_inf``."""

    def __init__(self, device_type: str, config: TrainConfig) -> None:
        self.grad_scaler = ShardedGradScaler(
            device_type,
            init_scale=config.init_scale,
            growth_factor=config.growth_factor,
            backoff_factor=config.backoff_factor,
            growth_interval=config.growth_interval,
        )


class AgreedOwnScaling(OwnScaling):
    """mpcourse's scaler with its inf/nan flag max-reduced over the ranks before the step decision."""

    def unscale_(
        self, optimizer: torch.optim.Optimizer, grads: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        found_t, norm_t = super().unscale_(optimizer, grads)
        dist.all_reduce(found_t, op=dist.ReduceOp.MAX)
        return found_t, norm_t


def make_distributed_scaling(config: TrainConfig, device: torch.device, strategy: str, agree: bool) -> TorchScaling:
    """The scaling object of :class:`DistributedTorchEngine` (see the module docstring)."""
    base = make_scaling(config, device, pure_half=False)
    if isinstance(base, GradScalerScaling):
        return ShardedGradScalerScaling(device.type, config) if strategy == "ddp" and agree else base
    assert isinstance(base, OwnScaling)
    return AgreedOwnScaling(base.scaler, device) if agree else base


def cast_reduce_hook(dtype: torch.dtype) -> Callable[[int, Any], Any]:
    """A DDP communication hook that averages each gradient bucket in ``dtype`` (state: the world size).

    torch's ``bf16_compress_hook`` does the same but only on NCCL; this one runs on gloo too.
    The bucket is cast, divided by the world size, all-reduced, and copied back to fp32.
    """

    # No annotations: DDP checks them against dist.GradBucket / Future, and postponed
    # annotations (``from __future__ import annotations``) would arrive as strings.
    def hook(world_size, bucket):
        buffer = bucket.buffer()
        sent = buffer.to(dtype).div_(world_size)
        fut = dist.all_reduce(sent, async_op=True).get_future()

        def back(f: Any) -> torch.Tensor:
            buffer.copy_(f.value()[0])
            return buffer

        return fut.then(back)

    return hook


# --- the engine ------------------------------------------------------------------------------------
class DistributedTorchEngine(TorchEngine):
    """A :class:`TorchEngine` on one rank of a process group; ``config.batch_size`` is the global batch.

    Args:
        model, config, device, loss_fn, num_features, num_classes, size: as for TorchEngine.
        strategy: ``"ddp"`` or ``"fsdp"``. Default ``"ddp"``.
        reduce_dtype: the gradient reduction's dtype, ``"fp32"``, ``"bf16"`` or ``"fp16"``. Default ``"fp32"``.
        agree_found_inf: reduce the inf/nan flag over the ranks (DDP). Default True; False only
            to demonstrate the divergence it prevents.
        inject_inf: ``(step, rank)``: after that step's backward, rank ``rank`` writes an inf into
            one of its gradients (a drill for "one rank overflows"). Default None.
    """

    def __init__(
        self,
        model: Any,
        config: TrainConfig,
        device: str = "cpu",
        loss_fn: Any = None,
        num_features: int = 64,
        num_classes: int = 10,
        size: str = "small",
        *,
        strategy: str = "ddp",
        reduce_dtype: str = "fp32",
        agree_found_inf: bool = True,
        inject_inf: tuple[int, int] | None = None,
    ) -> None:
        check_choice("strategy", strategy, STRATEGIES)
        check_choice("reduce_dtype", reduce_dtype, tuple(DTYPES))
        if not dist.is_initialized():
            raise RuntimeError(
                "torch.distributed is not initialised: call init_distributed() in a process started by "
                "torch's launcher (mpcourse train --nproc N, or torchrun)"
            )
        if not config.master_weights:
            raise ValueError("master_weights=False (pure half) is not supported under torch.distributed")
        if strategy == "fsdp" and config.clip is not None:
            raise ValueError("clip= is not supported with strategy='fsdp' (its gradients are sharded); use 'ddp'")
        if device in ("auto", "cuda") and torch.cuda.is_available():
            device = f"cuda:{torch.cuda.current_device()}"  # this rank's GPU (init_distributed set it)
        super().__init__(model, config, device, loss_fn, num_features, num_classes, size)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.strategy, self.reduce_dtype = strategy, reduce_dtype
        self.inject_inf = inject_inf
        self.module = self.model  # the plain nn.Module (DDP wraps it; fully_shard shards it in place)
        self._weight = 1.0
        if strategy == "ddp":
            self.model = self._wrap_ddp()
        else:
            self._shard_fsdp()
        self.optimizer = self._make_optimizer()  # over the wrapped (for FSDP: sharded) parameters
        self.scaling = make_distributed_scaling(config, self.torch_device, strategy, agree_found_inf)

    def _wrap_ddp(self) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.torch_device.index or 0] if self.torch_device.type == "cuda" else None
        ddp = DistributedDataParallel(self.model, device_ids=ids)
        if self.reduce_dtype != "fp32":  # the gradients travel (and are summed) in that dtype
            ddp.register_comm_hook(self.world_size, cast_reduce_hook(DTYPES[self.reduce_dtype]))
        return ddp

    def _shard_fsdp(self) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(self.torch_device.type, (self.world_size,))
        param_dtype = None if self.config.precision == "fp32" else self.dtype
        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=DTYPES[self.reduce_dtype])
        fully_shard(self.model, mesh=mesh, mp_policy=policy)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "strategy": self.strategy,
            "world_size": self.world_size,
            "reduce_dtype": self.reduce_dtype,
        }

    # --- one step on this rank's part of the global batch ------------------------------------
    def _train_step(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        part = np.array_split(np.arange(len(x)), self.world_size)[self.rank]
        # Gradients are averaged over ranks: weight this rank's mean so the average is the global mean.
        self._weight = len(part) * self.world_size / len(x)
        out = super()._train_step(x[part], y[part])
        loss = torch.tensor([out["loss"] / self.world_size], dtype=torch.float64)
        dist.all_reduce(loss)  # the global batch's mean loss, as one process reports it
        out["loss"] = float(loss.item())
        return out

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if len(x) == 0:  # a last batch smaller than the world: this rank still joins the reduction
            with self.autocast():
                return self.model(x).float().sum() * 0.0
        return super().forward_loss(x, y) * self._weight

    def grads(self) -> list[torch.Tensor]:
        # FSDP's gradients are DTensor shards; their local tensors share storage (in-place works).
        return [_local(p.grad) for p in self.model.parameters() if p.grad is not None]

    def _after_backward(self) -> None:
        if self.inject_inf is None or self.inject_inf != (self.step, self.rank):
            return
        for g in self.grads():
            if g.numel():
                g.view(-1)[0] = float("inf")
                return

    def _global_norm(self, norm_t: torch.Tensor) -> torch.Tensor:
        if self.strategy == "ddp":
            return norm_t  # every rank holds the full, reduced gradients
        sq = norm_t.detach().double().reshape(1) ** 2
        dist.all_reduce(sq)
        return sq.sqrt().float().reshape(())

    # --- state -------------------------------------------------------------------------------------
    def _framework_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        # Full (gathered) tensors on the CPU, the same on every rank: the format one process saves.
        model, optim = get_state_dict(self.model, self.optimizer, options=StateDictOptions(full_state_dict=True))
        cpu = {k: _local(v).detach().to("cpu", copy=True) for k, v in model.items()}
        return {"model": cpu, "optimizer": _cpu_tree(optim), "scaler": self.scaling.state_dict()}

    def _load_framework_state(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        scaler = dict(state["scaler"])
        if scaler.get("kind") != self.scaling.kind:
            raise ValueError(
                f"state_dict has a {scaler.get('kind')!r} loss scaler but this engine uses "
                f"{self.scaling.kind!r}; build the engine with the same TrainConfig"
            )
        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=opts,
        )
        self.scaling.load_state_dict(scaler)


def model_sha256(engine: TorchEngine) -> str:
    """SHA-256 of the engine's full model state as :func:`mpcourse.engines.portable.model_sha256` computes it.

    Collective under FSDP (every rank gathers the full tensors).
    """
    model = engine.state_dict()["framework"]["model"]
    return sha256_arrays({k: _local(v).detach().float().cpu().numpy() for k, v in model.items()})


def local_bytes(engine: DistributedTorchEngine) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state this rank holds (its shards under FSDP).

    A count of the tensors' storage, exact on any device; on CUDA compare with
    ``torch.cuda.max_memory_allocated()``, which also sees activations and buffers.
    """

    def size(t: Any) -> int:
        t = _local(t)
        return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0

    params = list(engine.model.parameters())
    optim = [v for s in engine.optimizer.state.values() for v in s.values()]
    out = {
        "params": sum(size(p) for p in params),
        "grads": sum(size(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(size(v) for v in optim),
    }
    if engine.torch_device.type == "cuda":  # the allocator's own counter, activations included
        out["cuda_max_allocated"] = int(torch.cuda.max_memory_allocated(engine.torch_device))
    return out


def _local(t: Any) -> Any:
    return t.to_local() if hasattr(t, "to_local") else t


def _cpu_tree(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return _local(obj).detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu_tree(v) for v in obj]
    return obj

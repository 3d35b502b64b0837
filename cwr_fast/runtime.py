"""Where and how a run executes, for the tools that run models (train, evaluate, reproduce):
the device, torchrun's process group and its reductions, mixed precision, and the seeds.

    torchrun --nproc_per_node 8 -m cwr_fast.train --dataset imagenet ...
    (CPU: gloo backend; GPU: nccl, one device per process, LOCAL_RANK)
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import sys
from dataclasses import dataclass

import numpy as np

import torch
import torch.distributed as dist
from torch import nn

from cwr_fast.errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:LOCAL_RANK when CUDA is available, else cpu; 'cpu', 'cuda', 'cuda:N'.
    Anything else is a UsageError (a ValueError) naming --device."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r}: cwr_fast runs on auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a stateless model."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


# ---- mixed precision: one spelling ---------------------------------------------------------------

AMP_MODES = ("auto", "bf16", "fp16", "off")  # the --amp choices of every tool
_AMP_DTYPES = {None: None, "off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_FP16_LOSS_SCALE = 1024.0  # keeps fp16 input gradients from underflowing; steps use the direction only


def resolve_amp(mode: str, device: torch.device | str) -> str | None:
    """--amp -> the autocast mode of the run: 'auto' is bf16 on CUDA and off on the CPU
    (where oneDNN emulates bf16 without AMX); None means float32."""
    if mode not in AMP_MODES:
        raise UsageError(f"--amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    if mode == "auto":
        return "bf16" if torch.device(device).type == "cuda" else None
    return None if mode == "off" else mode


# 'auto' picks bf16 on a CPU only where the model's passes measured at least this much faster: the
# float32 re-checks of attacks/precision.py and the attacks' own float32 work take part of the gain
BF16_MIN_SPEEDUP = 1.3


def cpu_has_native_bf16() -> bool:
    """AMX or AVX-512 BF16: without either, oneDNN emulates bf16 and it is slower than float32."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def choose_amp(mode: str, device: torch.device | str, measure_bf16=None) -> tuple[str | None, str]:
    """--amp for an evaluation -> (autocast mode, a line saying what was chosen and why).

    'auto': bf16 on CUDA; on a CPU, bf16 only where it has native bf16 (AMX, AVX-512 BF16) and
    `measure_bf16()` (the float32 time over the bf16 time of the model's forward and backward
    passes) is at least BF16_MIN_SPEEDUP; else float32. An explicit 'bf16' on a CPU is kept, with a
    warning in the line when it measured slower than float32."""
    if mode not in AMP_MODES:
        raise UsageError(f"--amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    on_cpu = torch.device(device).type == "cpu"
    if mode == "auto" and not on_cpu:
        return "bf16", "amp auto: bf16 (CUDA)"
    if mode == "auto":
        if not cpu_has_native_bf16() or measure_bf16 is None:
            return None, "amp auto: float32 (this CPU has no native bf16: no AMX or AVX-512 BF16)"
        factor = measure_bf16()
        if factor >= BF16_MIN_SPEEDUP:
            return "bf16", f"amp auto: bf16 (measured {factor:.2f}x float32 on this CPU)"
        return None, f"amp auto: float32 (bf16 measured {factor:.2f}x float32 on this CPU)"
    amp = None if mode == "off" else mode
    if amp == "bf16" and on_cpu and measure_bf16 is not None:
        factor = measure_bf16()
        if factor < 1.0:
            return amp, (f"warning: --amp bf16 is slower than float32 on this CPU (measured "
                         f"{factor:.2f}x: {1 / factor:.1f} times the float32 time); --amp auto picks "
                         "the faster")
        return amp, f"amp bf16 (measured {factor:.2f}x float32 on this CPU)"
    return amp, f"amp {amp or 'off'}"


def amp_dtype(amp: str | None) -> torch.dtype | None:
    if amp not in _AMP_DTYPES:
        raise UsageError(f"amp must be one of {[k for k in _AMP_DTYPES if k]}, got {amp!r}")
    return _AMP_DTYPES[amp]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def fp16_loss_scale(dtype: torch.dtype | None) -> float | None:
    """The factor on dL/dlogits under fp16 autocast (None otherwise)."""
    return _FP16_LOSS_SCALE if dtype == torch.float16 else None


# ---- seeds -----------------------------------------------------------------------------------------

def seed_everything(seed: int, deterministic: bool = False) -> None:
    """torch, Python and NumPy global seeds; deterministic: torch's deterministic algorithms and
    no cuDNN benchmark (else cuDNN benchmarks on CUDA)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


# ---- child processes -------------------------------------------------------------------------------

PARENT_ENV = "CWR_FAST_PARENT_PID"  # set by cwr_fast.reproduce for the trainings it starts


def die_with_parent() -> None:
    """In a process started by a cwr_fast parent ($CWR_FAST_PARENT_PID): Linux sends it SIGTERM
    when that parent dies, even by SIGKILL (PR_SET_PDEATHSIG), so no orphan keeps writing a run
    the parent's rerun resumes; if the parent is gone already, it stops now."""
    parent = os.environ.get(PARENT_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):
        raise SystemExit(f"cwr_fast: the parent process {parent} is gone; stopping")


# ---- torchrun --------------------------------------------------------------------------------------

def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


JOIN_TIMEOUT_ENV = "CWR_FAST_JOIN_TIMEOUT"  # seconds the processes wait for each other at the start


class RendezvousError(UsageError):
    """The processes torchrun's variables describe did not all join in time: a usage error (exit
    2), as a stale WORLD_SIZE in the environment is the usual cause; a ValueError too."""


def init(device_name: str, timeout_s: float = 1800.0) -> DistInfo:
    """Joins the process group torchrun describes (WORLD_SIZE > 1), else a single process. Rank 0
    says at once what it waits for; the processes give up after $CWR_FAST_JOIN_TIMEOUT seconds
    (default 300) if they have not all joined, with a RendezvousError saying why. timeout_s
    bounds each collective operation afterwards."""
    world = world_size_from_env()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world <= 1:
        return DistInfo(0, 1, 0, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        rank = int(os.environ.get("RANK", "0"))
        store = _join(rank, world, float(os.environ.get(JOIN_TIMEOUT_ENV, "300")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def _join(rank: int, world: int, join_s: float):
    """The rendezvous of torchrun's env:// method (MASTER_ADDR, MASTER_PORT), with its own time
    limit and a message while it waits."""
    addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = int(os.environ.get("MASTER_PORT", "29500"))
    where = f"{addr}:{port}"
    if rank == 0:
        print(f"cwr_fast: waiting for {world} processes to join at {where} (WORLD_SIZE={world} in the "
              f"environment: torchrun sets it); giving up after {join_s:g} s", file=sys.stderr, flush=True)
    timeout = datetime.timedelta(seconds=join_s)
    try:
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":  # torchrun's agent hosts it
            return dist.TCPStore(addr, port, world, is_master=False, timeout=timeout)
        return dist.TCPStore(addr, port, world, is_master=rank == 0, wait_for_workers=True,
                             multi_tenant=True, timeout=timeout)
    except (RuntimeError, OSError) as err:  # DistStoreError is a RuntimeError
        raise RendezvousError(
            f"the {world} processes of WORLD_SIZE={world} did not all join at {where} within "
            f"{join_s:g} s ({str(err).splitlines()[0] if str(err) else type(err).__name__}): start "
            f"them with torchrun, or unset WORLD_SIZE/RANK for one process "
            f"(${JOIN_TIMEOUT_ENV} sets the wait)") from None


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


def _comm_device(tensor: torch.Tensor) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (returns a new tensor on tensor's device); identity for one process."""
    if not is_initialized() or dist.get_world_size() == 1:
        return tensor
    t = tensor.detach().to(_comm_device(tensor)).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(tensor.device)


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Rank src's buffers (BatchNorm statistics) on every process, so that eval-mode forwards
    agree across ranks (DDP only broadcasts them at the start of each training forward)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return
    for buf in module.buffers():
        t = buf.detach().to(_comm_device(buf))
        dist.broadcast(t, src)
        if t.data_ptr() != buf.data_ptr():
            buf.copy_(t)


def barrier() -> None:
    if is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """A picklable object from rank src on every process."""
    if not is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


# ---- memory layout ----------------------------------------------------------------------------------

def to_channels_last(t: torch.Tensor) -> torch.Tensor:
    """A 4-D tensor with channels-last strides (N, C, H, W) -> (HWC, 1, WC, C); others as they are.

    Unlike .contiguous(memory_format=...), this also restrides tensors with one channel, whose
    plain strides count as channels-last contiguous but make convolutions pick the NCHW kernels."""
    if t.dim() != 4 or is_channels_last(t):
        return t
    return torch.empty_like(t, memory_format=torch.channels_last).copy_(t)


def is_channels_last(t: torch.Tensor) -> bool:
    """True for a 4-D tensor with exactly the channels-last strides (HWC, 1, WC, C)."""
    if t.dim() != 4:
        return False
    _, c, h, w = t.shape
    return t.stride() == (h * w * c, 1, w * c, c)

"""Devices and data-parallel training across processes: PyTorch's DDP, launched by `torchrun`.

nextchar starts no processes itself. `torchrun` starts one per core group or GPU, on one
machine or many, and tells each its place through the environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). `init` joins the process group those variables
describe (gloo on CPUs, NCCL on GPUs); training then wraps the model in
DistributedDataParallel, which averages the gradients of all ranks in every backward pass:

    torchrun --standalone --nproc_per_node 2 -m nextchar train DATA --out run

Rank 0 alone evaluates and writes (checkpoints, metrics, plot, progress bar); the other ranks
wait for it at the next collective. Each rank reads only its own rows of every batch.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from nextchar.errors import UserError

DEVICES = ("auto", "cpu", "cuda", "mps")
# How long a rank waits for the others at a collective. Rank 0 evaluates and writes while the
# others wait, so it must cover that; a rank that dies is noticed at once (its sockets close).
TIMEOUT = timedelta(minutes=10)


def env_world_size() -> int:
    """The number of processes `torchrun` started (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_restart() -> bool:
    """True in processes that torchrun restarted after a failure (--max-restarts)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def restart_caveat() -> str | None:
    """Why torchrun's restarts would fail here, if they would (checked on torch 2.13)."""
    if (
        int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0
        and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    ):
        return (
            "torchrun shares its rendezvous store with these processes, so after a failure the restarted "
            "ones can read stale addresses and fail to connect; set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
            "for torchrun to make --max-restarts work (pytorch/pytorch#135712)"
        )
    return None


def resolve_device(name: str) -> torch.device:
    """`auto` → cuda if available, else mps, else cpu; under torchrun, GPU = LOCAL_RANK."""
    if name not in DEVICES:
        raise UserError(f"device must be one of {', '.join(DEVICES)}, not {name!r}", parameter="device")
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available() and env_world_size() == 1:
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                'device="cuda": this PyTorch sees no CUDA GPU; use device="cpu" (or auto)', parameter="device"
            )
        local = env_local_rank()
        if local >= torch.cuda.device_count():
            raise UserError(
                f"local rank {local} has no GPU of its own ({torch.cuda.device_count()} on this "
                "machine); start at most that many processes per node"
            )
        return torch.device("cuda", local)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(
                'device="mps": Apple\'s Metal backend is not available here; use device="cpu" (or auto)',
                parameter="device",
            )
        if env_world_size() > 1:
            raise UserError('device="mps" does not support distributed training; use device="cpu"', parameter="device")
    return torch.device(name)


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs; gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def init(device: torch.device) -> bool:
    """Join the process group torchrun described, if it started more than one process."""
    if env_world_size() <= 1 or dist.is_initialized():
        return dist.is_initialized()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), timeout=TIMEOUT)
    _defer_termination()
    return True


def teardown() -> None:
    """Leave the process group.

    Collect garbage first: destroying the group while DDP's reducer or gloo buffers are still
    alive made about 4 runs in 10 abort with SIGABRT at exit (see docs/stack.md); callers drop
    their model and optimizer before calling this.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over all ranks (float64, so sums of a few counts are exact)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_rows(parts: tuple[torch.Tensor, ...], total_rows: int) -> tuple[torch.Tensor, ...]:
    """Reassemble a batch split row-wise as rank r ↔ rows r, r+W, r+2W, … (batch first).

    Every rank receives the whole batch (all_gather needs equal shapes, so parts are padded
    to ceil(total/W) rows first).
    """
    world, most = world_size(), -(-total_rows // world_size())
    whole = []
    for part in parts:
        padded = part.new_zeros((most, *part.shape[1:]))
        padded[: len(part)] = part
        pieces = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(pieces, padded.contiguous())
        out = part.new_empty((total_rows, *part.shape[1:]))
        for r, piece in enumerate(pieces):
            out[r::world] = piece[: len(range(r, total_rows, world))]
        whole.append(out)
    return tuple(whole)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class StopRequest:
    """A flag set by a signal (or a caller), read at the next step by every rank."""

    def __init__(self) -> None:
        self.requested = False


# Set by SIGTERM in a process that joined a process group (see `init`): torchrun sends SIGTERM
# to every process when one fails (sometimes twice), and a process killed by it while it
# reports an error or leaves the group would vanish without a word.
_TERMINATE = StopRequest()


def _defer_termination() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: setattr(_TERMINATE, "requested", True))


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """In one process: SIGTERM (a scheduler's, a container's stop) asks the run to stop after the
    current step, evaluate and save its resume state, as a process group's ranks do."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    _TERMINATE.requested = False  # a run of its own: an earlier run's SIGTERM is not this one's
    signal.signal(signal.SIGTERM, lambda signum, frame: setattr(_TERMINATE, "requested", True))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def termination_requested() -> bool:
    """SIGTERM arrived: stop after the current step (torchrun's SIGKILL follows if we do not)."""
    return _TERMINATE.requested


@contextmanager
def stop_on_ctrl_c(request: StopRequest) -> Iterator[StopRequest]:
    """Turn the first Ctrl-C into a request to stop after the current step.

    Why: ranks interrupted at different points of a step would wait for each other forever;
    a flag that all ranks agree on at the next step stops them together, after which rank 0
    evaluates and saves as a single process does on Ctrl-C. A second Ctrl-C acts as usual.
    """
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: object) -> None:
        request.requested = True
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)


def is_communication_error(exc: BaseException) -> bool:
    """A collective failed: another rank died or the network went away."""
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError)
        and any(word in str(exc) for word in ("Connection closed by peer", "Connection reset", "gloo", "NCCL"))
    )


def describe(exc: BaseException) -> str:
    """The gist of a backend error: "[…/pair.cc:553] Connection closed by peer [host]:port. This…"."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    first = re.sub(r"^\[[^\]]*\]\s*", "", first)  # the C++ source location
    return first.split(". ")[0].rstrip(".")

"""The processes of a run: one, or several started by ``accelerate launch`` (or ``torchrun``).

PPO asks the same few things of them wherever it runs: which process this is, the sum, maximum
or concatenation of a value over all processes, whether any process raised a flag, and a model
wrapped so that its gradients are averaged (DDP). With one process each of these is the value
itself, so the single-process code path is the multi-process one with ``num_processes == 1``.
The reductions are accelerate's (``reduce``, ``gather``, ``gather_object``); nothing here
starts a process group by hand.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

LAUNCH_VARIABLES = ("ACCELERATE_MIXED_PRECISION", "WORLD_SIZE")
"""Set by ``accelerate launch`` (the first) or any torch launcher (the second): the run was launched."""


def launched() -> bool:
    """Whether this process was started by ``accelerate launch`` or a torch launcher such as ``torchrun``."""
    return any(name in os.environ for name in LAUNCH_VARIABLES)


SHARDED_LAUNCHES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
                    "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}
"""accelerate's variables for engines that shard the weights, which the agent does not support yet."""


def unsupported_launch() -> str | None:
    """Why this launch cannot train (an engine that shards the weights, fp16 or fp8), or None."""
    for variable, engine in SHARDED_LAUNCHES.items():
        if os.environ.get(variable, "").lower() in ("true", "1"):
            return (f"accelerate launches {engine} here ({variable}), which textenv does not support yet: each "
                    "process must hold the whole policy to decode token by token; launch plain data parallel "
                    "(--multi_gpu), and use lora_rank to fit a larger model")
    if launched_precision() not in (None, "no", "bf16"):
        return (f"accelerate's --mixed_precision {launched_precision()} is not supported: PPO keeps fp32 weights "
                "with bf16 autocast (--mixed_precision bf16) or runs in fp32 (--mixed_precision no)")
    return None


def is_main_process() -> bool:
    """Whether this is the main process of the launch (rank 0), or the only one; known before any model loads."""
    return os.environ.get("RANK", "0") == "0"


def launched_precision() -> str | None:
    """``accelerate launch``'s ``--mixed_precision`` (or its config file's), or None when not launched by it."""
    return os.environ.get("ACCELERATE_MIXED_PRECISION")


class Processes:
    """The run's processes, as PPO sees them.

    Attributes:
        accelerator: the ``accelerate.Accelerator`` of a launched run, else None.
        num: how many processes run; each samples ``batch_size / num`` episodes per iteration.
        index: this process's rank (0 is the main process: it logs and writes checkpoints).
    """

    def __init__(self, accelerator: Any = None):
        self.accelerator = accelerator
        self.num = accelerator.num_processes if accelerator is not None else 1
        self.index = accelerator.process_index if accelerator is not None else 0

    @classmethod
    def for_run(cls, device: str) -> Processes:
        """One process, unless launched: then accelerate's view of the launch.

        Args:
            device: the config's ``device``; ``"cpu"`` (or no CUDA) makes a launched run use
                CPU processes, reduced over gloo.

        Raises:
            ValueError: the launch asks for FSDP, DeepSpeed, Megatron-LM, fp16 or fp8 (:func:`unsupported_launch`).
        """
        if not launched():
            return cls()
        problem = unsupported_launch()
        if problem:
            raise ValueError(problem)
        from accelerate import Accelerator
        from accelerate.state import is_initialized

        if is_initialized():  # the script made its own Accelerator first: share its state, as accelerate's objects do
            accelerator = Accelerator()
            if accelerator.mixed_precision not in ("no", "bf16"):
                raise ValueError(f"the script's Accelerator has mixed_precision={accelerator.mixed_precision!r}, "
                                 "which PPO does not support: create it with 'bf16' or 'no'")
        else:
            cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
            accelerator = Accelerator(cpu=cpu, mixed_precision=launched_precision() or "no")
        # The agent runs its own bf16 autocast (textenv.devices), the same in every forward; accelerate's would
        # also wrap the update's forward and cast its outputs to fp32, so the update's log-probs would round
        # differently from the rollout policy's (a ratio off 1 before any step). Off for this object only.
        accelerator.native_amp = False
        return cls(accelerator)

    def precision(self, precision: str) -> str:
        """The config's ``precision``; in a launched run "auto" follows accelerate's mixed precision.

        That is ``accelerate launch --mixed_precision`` (or its config file's), or the one the script's
        own ``Accelerator`` was made with: ``"bf16"`` gives bf16, ``"no"`` fp32.
        """
        if precision != "auto" or self.accelerator is None:
            return precision
        return "bf16" if self.accelerator.mixed_precision == "bf16" else "fp32"

    @property
    def is_main(self) -> bool:
        """Whether this is the main process (rank 0)."""
        return self.index == 0

    @property
    def device(self) -> torch.device | None:
        """The device accelerate gives this process, or None for one process (the config decides)."""
        if self.accelerator is None:
            return None
        device = self.accelerator.device
        return torch.device("cpu") if device.type == "cpu" else device

    @property
    def gradient_accumulation_steps(self) -> int:
        """accelerate's ``--gradient_accumulation_steps`` (1 for one process)."""
        return self.accelerator.gradient_accumulation_steps if self.accelerator is not None else 1

    def shares(self, config: Any) -> tuple[int, int, int]:
        """Each process's share of a PPO config's batch: ``batch_size / N`` episodes, mini-batches of
        ``mini_batch_size / N`` (an optimizer step still sees ``mini_batch_size`` episodes in all), and
        micro-batches of that over the gradient accumulation steps (the config's, or accelerate's
        ``--gradient_accumulation_steps``).

        Raises:
            ValueError: the sizes do not split whole over the processes and steps (naming the option).
        """
        n = self.num
        steps, launched_steps = config.gradient_accumulation_steps, self.gradient_accumulation_steps
        if launched_steps > 1:
            if steps not in (1, launched_steps):
                raise ValueError(f"gradient_accumulation_steps {steps} differs from accelerate's "
                                 f"--gradient_accumulation_steps {launched_steps}: give one of them")
            steps = launched_steps
        if config.mini_batch_size % (n * steps):
            raise ValueError(f"mini_batch_size {config.mini_batch_size} must be a multiple of {n} process(es) x "
                             f"{steps} gradient accumulation step(s): each process's micro-batches must be whole")
        local_batch = config.batch_size // n  # (batch_size is a multiple of mini_batch_size)
        if config.advantage != "gae" and local_batch % config.group_size:
            raise ValueError(f"group_size {config.group_size} must divide each process's {local_batch} episodes "
                             f"(batch_size {config.batch_size} over {n} processes): a group is sampled whole")
        return local_batch, config.mini_batch_size // n, config.mini_batch_size // n // steps

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model wrapped so that its backward averages gradients over processes (DDP); itself for one."""
        if self.num == 1:
            return model
        wrapped = self.accelerator.prepare_model(model, device_placement=False)
        atexit.register(_release_reducer, weakref.ref(wrapped))
        return wrapped

    @contextlib.contextmanager
    def no_sync(self, model: torch.nn.Module, skip: bool) -> Iterator[None]:
        """With ``skip``, a backward that only accumulates: the gradients are averaged at the next one."""
        if skip and self.num > 1:
            with self.accelerator.no_sync(model):
                yield
        else:
            yield

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of ``value`` (any shape, the same on every process) over processes."""
        return value if self.num == 1 else self.accelerator.reduce(value.clone(), reduction="sum")

    def max(self, value: torch.Tensor) -> torch.Tensor:
        """The elementwise maximum of ``value`` over processes."""
        if self.num == 1:
            return value
        return self.accelerator.gather(value.clone()[None]).amax(dim=0)

    def gather(self, value: torch.Tensor) -> torch.Tensor:
        """(n, ...) rows of every process → (num * n, ...), in rank order (``n`` the same on each)."""
        return value if self.num == 1 else self.accelerator.gather(value.contiguous())

    def concatenate(self, values: np.ndarray) -> np.ndarray:
        """A 1-D array of each process (of any length) → their concatenation in rank order."""
        if self.num == 1:
            return values
        from accelerate.utils import gather_object

        return np.concatenate(gather_object([np.asarray(values)]))

    def objects(self, value: Any) -> list[Any]:
        """Every process's ``value`` (picklable, between our own processes only), in rank order."""
        if self.num == 1:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process: every process takes the same branch after it."""
        if self.num == 1:
            return flag
        device = self.device or torch.device("cpu")
        return bool(self.sum(torch.tensor([float(flag)], device=device)).item() > 0)

    def reduce_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """Sum each statistic over processes (the maximum for ``*_max`` keys); every process has the same keys."""
        if self.num == 1 or not stats:
            return stats
        keys = sorted(stats)
        device = self.device or torch.device("cpu")
        values = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=device)
        is_max = torch.tensor([k.endswith("_max") for k in keys], device=device)
        summed, largest = self.sum(values), self.max(values)
        return {k: float(v) for k, v in zip(keys, torch.where(is_max, largest, summed).tolist())}


def _release_reducer(wrapped: weakref.ref) -> None:
    """Free a DDP model's reducer at exit, before the interpreter tears down the process group: left to the
    teardown's order, a process that had run a backward aborted in about one exit of five on a loaded 2-core
    machine ("terminate called without an active exception", exit -6, which fails the whole launch)."""
    model = wrapped()
    if model is not None and hasattr(model, "reducer"):
        del model.reducer
        gc.collect()

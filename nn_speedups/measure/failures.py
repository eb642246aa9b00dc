"""How a case fails to be measured, in one line with the numbers that say why: MeasurementError, a user's model
refusing the --image-size it was resized to, CUDA out of memory; and releasing memory so the run goes on."""

from __future__ import annotations

import gc

import torch

from nn_speedups.measure import metrics
from nn_speedups.measure.cases import Case
from nn_speedups.models.registry import ModelSpec


class MeasurementError(AssertionError):
    """A case that could not be measured, with the numbers that say why (e.g. CUDA out of memory)."""


def size_refusal(spec: ModelSpec, size: int, error: BaseException) -> MeasurementError | None:
    """The one-line failure of a user's model that --image-size resized and whose forward then raised (None for any
    other model: its error stands as it is)."""
    from nn_speedups.models.user import cause, resized_from

    own = resized_from(spec)
    if own is None:
        return None
    return MeasurementError(
        f"{spec.name} does not take {size} x {size} inputs (its example is {own[0]}x{own[1]}): drop --image-size or "
        f"make the model take other sizes (e.g. adaptive pooling before its head); {cause(error, 200)}"
    )


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def out_of_memory(case: Case, error: torch.OutOfMemoryError) -> MeasurementError:
    """The failure of a case that ran out of CUDA memory, with the allocator's numbers; memory is released so the
    run goes on with the next case."""
    numbers = cuda_memory_numbers()
    release_memory()
    return MeasurementError(f"{case.id}: CUDA out of memory ({numbers}): {str(error).splitlines()[0]}")


def cuda_memory_numbers() -> str:
    if not torch.cuda.is_available():
        return "no CUDA"
    free, total = torch.cuda.mem_get_info()
    return (
        f"peak allocated {torch.cuda.max_memory_allocated() / metrics.MB:.0f} MB, "
        f"reserved {torch.cuda.memory_reserved() / metrics.MB:.0f} MB, "
        f"free {free / metrics.MB:.0f} of {total / metrics.MB:.0f} MB"
    )

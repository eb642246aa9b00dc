"""The distributed bench's cases (benches/test_distributed.py): one torchrun job per (model, batch, variant, world
size), its results turned into the case's record.

The pytest process never joins a process group. A job runs nn_speedups.distributed.worker in every rank; rank 0 writes
the measurements to a JSON file, which becomes the record here, and the slowest rank's per-step times become the
case's pytest-benchmark rounds. Every case needs world size 1 of its variant (the reference of its scaling
efficiency) and `ddp` at world size 1 (the family's baseline): jobs are cached per run, and one not run as a case is
launched when first needed, as nn_speedups.measure.protocol measures eager when its test did not run.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from nn_speedups.distributed import (
    DistributedJobError,
    TorchrunMissing,
    check_launch,
    launch,
    max_world_size,
    world_size_problem,
)
from nn_speedups.matrix.variant import Variant
from nn_speedups.measure import timing
from nn_speedups.measure.protocol import image_size_of
from nn_speedups.models.user import source_of
from nn_speedups.optimizations.distributed import step_apply

# The family's baseline: DDP with its defaults, fp32. Its world-size-1 run is every distributed case's "eager".
DDP = Variant("ddp", step_apply(), check="exact", marks=("torchrun",))


class Unsupported(Exception):
    """A case this machine cannot run (world size above its processors, a batch that does not split): a skip."""


@dataclass(frozen=True)
class Scaling:
    """A point of the world-size axis: `world_size` ranks, each with the case's batch (weak scaling: the global
    batch grows) or with an equal share of it (strong scaling: the global batch stays). World size 1 is the
    reference of both."""

    world_size: int
    kind: str  # "reference" (world size 1) | "weak" | "strong"

    @property
    def id(self) -> str:
        return f"ws{self.world_size}" if self.kind == "reference" else f"ws{self.world_size}-{self.kind}"

    def per_rank_batch(self, batch: int) -> int:
        return batch // self.world_size if self.kind == "strong" else batch


def scaling_points(world_sizes: tuple[int, ...]) -> list[Scaling]:
    points = []
    for n in world_sizes:
        points += [Scaling(1, "reference")] if n == 1 else [Scaling(n, "weak"), Scaling(n, "strong")]
    return points


def parse_world_sizes(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--world-sizes {text!r}: give positive integers, e.g. 1,2 or 1,2,4,8")
    return tuple(sorted({int(p) for p in parts}))


_JOBS: dict[tuple, dict | Exception] = {}


def threads_per_rank(settings) -> int:
    """CPU threads per rank, the same at every world size of the run (so world size 1 is a fair reference): the
    cores shared by the largest world size; one on the 2-core CI machine."""
    return max(1, max_world_size("cpu") // max(settings.world_sizes))


def run_job(case, world_size: int, settings) -> dict:
    """The torchrun job of (model, batch, variant) at `world_size`, launched once per run and cached: one job
    measures both scaling points of its world size."""
    key = (case.spec.name, case.batch_size, case.variant.name, world_size, settings.train_image_size, settings.device)
    if key not in _JOBS:
        try:
            _JOBS[key] = _launch_job(case, world_size, settings)
        except (DistributedJobError, TorchrunMissing) as error:
            _JOBS[key] = error
    result = _JOBS[key]
    if isinstance(result, Exception):
        raise result
    return result


def _launch_job(case, world_size: int, settings) -> dict:
    profile = settings.profile
    job = make_job(
        model=case.spec.name,
        image_size=image_size_of(case.spec, settings.train_image_size),
        batch=case.batch_size,
        world_size=world_size,
        variant=case.variant,
        device=torch.device(settings.device).type,
        threads=threads_per_rank(settings),
        timeout_s=settings.dist_timeout_s,
        timing={
            "warmup_rounds": profile.warmup_rounds,
            "budget_s": profile.timing_budget_s,
            "min_rounds": profile.min_rounds,
            "max_rounds": profile.max_rounds,
        },
        weights=settings.weights,
        user=source_of(case.spec),
    )
    return launch_job(job, settings.dist_timeout_s)


def make_job(
    model, image_size, batch, world_size, variant: Variant, device, threads, timeout_s, timing, weights=None, user=None
):
    """What nn_speedups.distributed.worker runs: the check, then per scaling point of `world_size` (the reference at 1;
    weak, and strong where `batch` divides) warm-up, timed rounds and a profiled step."""
    points = [Scaling(1, "reference")] if world_size == 1 else [Scaling(world_size, "weak")]
    if world_size > 1 and batch % world_size == 0:
        points.append(Scaling(world_size, "strong"))
    return {
        "model": model,
        "image_size": image_size,
        "weights": weights,
        "device": device,
        "world_size": world_size,
        "points": [{"kind": p.kind, "per_rank_batch": p.per_rank_batch(batch)} for p in points],
        "variant": variant.name,
        "check": variant.check,
        "config": variant.apply.config.as_dict(),
        "threads": threads,
        "timeout_s": max(60.0, timeout_s / 2),  # the process group's: a hung collective fails well within the job's
        "timing": timing,
        "user_model": user,  # nn_speedups.models.user.source_of: the ranks load a user's model again
    }


def launch_job(job: dict, timeout_s: float, env: dict | None = None) -> dict:
    """Run `job` under torchrun; rank 0's results, with the job and its wall time (launch_s) added."""
    with tempfile.TemporaryDirectory(prefix="nn-dist-") as where:
        where = Path(where)
        (where / "job.json").write_text(json.dumps(job))
        job_file, out_file = where / "job.json", where / "out.json"
        target = ["-m", "nn_speedups.distributed.worker", "--job", str(job_file), "--out", str(out_file)]
        launched = launch(target, job["world_size"], timeout_s, job["threads"], where / "logs", env=env)
        result = check_launch(launched)
        out = json.loads(out_file.read_text())
    out["launch_s"] = result.elapsed_s
    out["pids"] = sorted(result.pids)
    out["job"] = job
    return out


def _point(out: dict, kind: str) -> dict:
    return out["points"][kind]


def slowest_rank_times(point: dict) -> list[float]:
    """Per step, the slowest rank's time (s): the step is done when every rank is."""
    return [max(step) for step in zip(*point["rank_times_s"], strict=True)]


def images_per_s(out: dict, kind: str) -> float:
    point = _point(out, kind)
    return point["per_rank_batch"] * out["world_size"] / statistics.median(slowest_rank_times(point))


def run_distributed_case(case, scaling: Scaling, settings) -> tuple[dict, list[float]]:
    """Check and time `case` at `scaling` through torchrun; returns (extra_info record, the slowest rank's per-step
    seconds for pytest-benchmark's rounds)."""
    from nn_speedups.measure.protocol import case_fields, timing_fields

    problem = world_size_problem(scaling.world_size, settings.device)
    if problem:
        raise Unsupported(problem)
    if scaling.kind == "strong" and case.batch_size % scaling.world_size:
        raise Unsupported(
            f"strong scaling splits the global batch {case.batch_size} over {scaling.world_size} ranks: "
            f"it does not divide; choose --batch-sizes divisible by the world sizes"
        )
    out = run_job(case, scaling.world_size, settings)
    if not out["ok"]:
        raise DistributedJobError(out["error"])
    reference = out if scaling.world_size == 1 else _reference(case, settings)
    base = (
        out
        if case.variant.name == DDP.name and scaling.world_size == 1
        else _reference(_with_variant(case, DDP), settings)
    )
    point = _point(out, scaling.kind)
    rounds_s = slowest_rank_times(point)
    summary = timing.summarize(rounds_s)
    total = images_per_s(out, scaling.kind)
    reference_rate = images_per_s(reference, "reference") if reference["ok"] else None
    base_rate = images_per_s(base, "reference") if base["ok"] else None
    world = scaling.world_size
    rank_rates = [point["per_rank_batch"] / statistics.median(times) for times in point["rank_times_s"]]
    comm = point["comm"]
    peaks_device = point["peak_device_mb"]
    record = {
        **case_fields(case, settings.profile.name),
        "image_size": image_size_of(case.spec, settings.train_image_size),
        "world_size": world,
        "scaling": scaling.kind,
        "per_rank_batch_size": point["per_rank_batch"],
        "global_batch_size": point["per_rank_batch"] * world,
        "backend": out["backend"],
        "device_name": out["device_name"],
        **timing_fields(summary),
        "samples_per_s": total,
        "images_per_s": total,
        "images_per_s_per_rank": total / world,
        "images_per_s_by_rank": rank_rates,
        "eager_median_ms": statistics.median(slowest_rank_times(_point(base, "reference"))) * 1e3
        if base_rate
        else None,
        "speedup_vs_eager": total / base_rate if base_rate else None,
        "baseline": f"ddp at world size 1, batch {case.batch_size}",
        "ideal_images_per_s": world * reference_rate if reference_rate else None,
        "scaling_efficiency": total / (world * reference_rate) if reference_rate else None,
        "comm_share": _mean(c["share"] for c in comm),
        "comm_share_by_rank": [c["share"] for c in comm],
        "comm_ms": _mean(c["comm_ms"] for c in comm),
        "profiled_step_ms": max((c["step_ms"] for c in comm if c["step_ms"] is not None), default=None),
        "peak_device_mb": max(peaks_device) if all(p is not None for p in peaks_device) else None,
        "peak_device_mb_by_rank": peaks_device,
        "peak_host_mb": max(point["peak_host_mb"]),
        "peak_host_mb_by_rank": point["peak_host_mb"],
        "params": out["params"],
        # the check's first step compiles; this point's first warm-up step recompiles for its batch size
        "compile_s": sum(max(0.0, s - summary.median_ms / 1e3) for s in (out["first_step_s"], point["first_warmup_s"])),
        "threads": out["threads"],
        "launch_s": out["launch_s"],
        **out["check"],
        **{f"info_{k}": v for k, v in out["info"].items()},
    }
    for name, job in (("reference_error", reference), ("baseline_error", base)):
        if not job["ok"]:
            record[name] = job["error"]
    return record, rounds_s


def _mean(values) -> float | None:
    """The mean of the ranks' figures; None when a rank's profile held no marked step."""
    values = list(values)
    return None if any(v is None for v in values) else statistics.fmean(values)


def _reference(case, settings) -> dict:
    """World size 1 of `case`: its job's results, or {"ok": False, "error": ...} when that job failed (the case
    keeps its own figures; efficiency or speedup is then None, with the reason in the record)."""
    try:
        return run_job(case, 1, settings)
    except DistributedJobError as error:
        return {"ok": False, "error": str(error).splitlines()[0]}


def _with_variant(case, variant: Variant):
    return replace(case, variant=variant)

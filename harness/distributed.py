"""Data-parallel cases on torch.distributed: launching torchrun, setting up a rank, gathering the results.

The pytest process never joins a process group. Each case (model, batch, variant, world size) is one `torchrun
--standalone` job (a free port for its rendezvous, chosen by torchrun) running `harness.distributed_worker` in every
rank; rank 0 writes the job's measurements to a JSON file, which becomes the case's record here, and the slowest
rank's per-step times become its pytest-benchmark rounds.

Robustness: ranks run with a process-group timeout (a rank that hangs makes the others' collectives fail), torchrun
ends every rank once one fails and reports the first failure (its error file, written by `@record`), and `launch`
kills whatever is left of the job (torchrun and every process it started, seen or polled while it ran) when the job
outlives its timeout, so no run leaves orphans or hangs CI.

    python -m harness.distributed --check       # can this machine launch torchrun jobs?
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness import timing
from harness.variant import Variant
from optimizations.distributed import step_apply

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JOB_TIMEOUT_S = 600.0  # a whole torchrun job, startup included (--dist-timeout)
KILL_GRACE_S = 10.0  # after SIGTERM to torchrun (it stops its ranks), before SIGKILL to everything left
POLL_S = 0.25

# The family's baseline: DDP with its defaults, fp32. Its world-size-1 run is every distributed case's "eager".
DDP = Variant("ddp", step_apply(), check="exact", marks=("torchrun",))


class DistributedJobError(AssertionError):
    """A torchrun job that failed, timed out or reported a failed check; the message starts with a one-line summary
    (which rank, what error) and carries the first failure's details."""


class TorchrunMissing(RuntimeError):
    """torchrun cannot be launched here; the message names the fix."""


class Unsupported(Exception):
    """A case this machine cannot run (world size above its processors, a batch that does not split): a skip."""


# ------------------------------------------------------------------------------------------------- torchrun


def torchrun_command() -> list[str]:
    """The torchrun to launch: $TORCHRUN when set (a command line), else `python -m torch.distributed.run` with
    this interpreter (torchrun's own module, so the ranks run the same Python and torch as this process)."""
    override = os.environ.get("TORCHRUN")
    if override:
        parts = shlex.split(override)
        if not parts or shutil.which(parts[0]) is None:
            raise TorchrunMissing(
                f"TORCHRUN={override!r}: no such executable; point TORCHRUN at torchrun (e.g. .venv/bin/torchrun) or "
                "unset it to use this Python's torch.distributed.run"
            )
        return parts
    if not torch.distributed.is_available():
        raise TorchrunMissing(
            "this torch build has no torch.distributed (torch.distributed.is_available() is False): install the "
            "registry's default torch wheel (pip install torch)"
        )
    return [sys.executable, "-m", "torch.distributed.run"]


def torchrun_problem() -> str | None:
    """Why torchrun jobs cannot run here, or None (the `torchrun` requirement marker)."""
    try:
        torchrun_command()
    except TorchrunMissing as error:
        return str(error)
    return None


def max_world_size(device: str) -> int:
    """Ranks one node can hold: one process per GPU on CUDA, one per CPU core this process may use on a CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.device_count()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def world_size_problem(world_size: int, device: str) -> str | None:
    limit = max_world_size(device)
    if world_size <= limit:
        return None
    if torch.device(device).type == "cuda":
        return f"world size {world_size} needs {world_size} GPUs (one process per GPU); this machine has {limit}"
    return (
        f"world size {world_size} needs {world_size} CPU cores (one single-threaded process per core); this process "
        f"may use {limit}"
    )


@dataclass
class LaunchResult:
    returncode: int
    stdout: str
    stderr: str
    elapsed_s: float
    pids: set[int] = field(default_factory=set)  # torchrun and every process seen under it


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_all(proc: subprocess.Popen, seen: dict) -> None:
    """SIGTERM torchrun (it stops its ranks, which run in sessions of their own), then SIGKILL every process of the
    job still alive, and their process groups."""
    import psutil

    for child in _descendants(proc.pid):
        seen.setdefault(child.pid, child)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    while time.monotonic() < deadline and (proc.poll() is None or any(_alive(p) for p in seen.values())):
        time.sleep(POLL_S)
    for p in list(seen.values()):
        for child in _descendants(p.pid):
            seen.setdefault(child.pid, child)
    for p in seen.values():
        if _alive(p):
            try:
                os.killpg(p.pid, signal.SIGKILL)  # a rank leads its own session; its helpers die with it
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    psutil.wait_procs([p for p in seen.values() if _alive(p)], timeout=5)


def launch(
    target: list[str],
    nproc: int,
    timeout_s: float,
    threads: int = 1,
    log_dir: Path | None = None,
    env: dict | None = None,
) -> LaunchResult:
    """Run `torchrun --standalone --nproc-per-node NPROC TARGET...` (TARGET: `-m module args` or `script args`) from
    the repository root with OMP_NUM_THREADS=threads; returns its exit code and output. Raises DistributedJobError
    when it outlives `timeout_s`, after killing it and every process it started."""
    import psutil

    command = [*torchrun_command(), "--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0"]
    command += ["--monitor-interval=0.5", *target]
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="nn-dist-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    full_env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": python_path, **(env or {})}
    out_path, err_path = log_dir / "torchrun.out", log_dir / "torchrun.err"
    start = time.monotonic()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, cwd=ROOT, env=full_env, start_new_session=True)
        seen: dict[int, psutil.Process] = {}
        timed_out = False
        try:
            while proc.poll() is None:
                for child in _descendants(proc.pid):
                    seen.setdefault(child.pid, child)
                if time.monotonic() - start > timeout_s:
                    timed_out = True
                    break
                time.sleep(POLL_S)
        finally:
            # a normal exit leaves nothing behind; after a timeout (or an interrupt here) this kills the job
            _kill_all(proc, seen)
    result = LaunchResult(
        returncode=proc.returncode,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
        elapsed_s=time.monotonic() - start,
        pids={proc.pid, *seen},
    )
    if timed_out:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise DistributedJobError(
            f"torchrun job timed out after {timeout_s:.0f} s ({nproc} ranks): killed it and its {len(seen)} "
            f"processes; raise --dist-timeout if it was merely slow. Last output:\n{tail}"
        )
    return result


_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):\n(.*?)\n={20,}", re.S)


def failure_summary(result: LaunchResult) -> str:
    """One line naming the failed rank and its error, then torchrun's report of the first failure (the rank's error
    file: its traceback, or the signal that killed it)."""
    match = _ROOT_CAUSE.search(result.stderr) or _ROOT_CAUSE.search(result.stdout)
    if not match:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        return f"torchrun exited with code {result.returncode}:\n{tail}"
    block = match.group(1)
    rank = re.search(r"rank\s*:\s*(\d+)", block)
    exitcode = re.search(r"exitcode\s*:\s*(-?\d+)[^\n]*", block)
    traceback = block.split("traceback :", 1)[-1].strip().splitlines()
    last = next((line.strip() for line in reversed(traceback) if line.strip()), "")
    who = f"rank {rank.group(1)}" if rank else "a rank"
    how = exitcode.group(0).split(":", 1)[1].strip() if exitcode else "?"
    return f"{who} failed (exit code {how}): {last}\n{block}"


def check_launch(result: LaunchResult) -> LaunchResult:
    if result.returncode != 0:
        raise DistributedJobError(failure_summary(result))
    return result


def leftover_processes(pids: set[int]) -> list[str]:
    """The processes among `pids` still alive (zombies count as gone): what a finished job must not leave."""
    import psutil

    alive = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return alive


# ------------------------------------------------------------------------------------------- inside a rank


@dataclass(frozen=True)
class Rank:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def in_torchrun() -> bool:
    """True in a process torchrun (or another launcher following its environment contract) started."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init_group(device: str = "auto", timeout_s: float = 1800.0) -> Rank:
    """Join the default process group from torchrun's environment: NCCL with one GPU per process (cuda:LOCAL_RANK)
    when `device` is cuda (or auto with CUDA present), else gloo. A collective that waits longer than `timeout_s`
    (a rank died or hangs) raises, so the job ends instead of hanging."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    kind = torch.device(device).type if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    timeout = datetime.timedelta(seconds=timeout_s)
    if kind == "cuda":
        gpus = torch.cuda.device_count()
        if local_world > gpus:
            raise ValueError(
                f"{local_world} processes on this node but {gpus} GPUs: NCCL runs one process per GPU; "
                f"use --nproc-per-node {gpus} or fewer"
            )
        cuda = torch.device("cuda", local_rank)
        torch.cuda.set_device(cuda)
        dist.init_process_group("nccl", timeout=timeout, device_id=cuda)
        return Rank(rank, world, local_rank, cuda, "nccl")
    dist.init_process_group("gloo", timeout=timeout)
    return Rank(rank, world, local_rank, torch.device("cpu"), "gloo")


# ------------------------------------------------------------------------------------------- bench cases


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
    cores shared by the largest world size; one on the 2-core CI machine. CUDA ranks keep one thread per process."""
    if torch.device(settings.device).type == "cuda":
        return 1
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
    points = [Scaling(1, "reference")] if world_size == 1 else [Scaling(world_size, "weak")]
    if world_size > 1 and case.batch_size % world_size == 0:
        points.append(Scaling(world_size, "strong"))
    profile = settings.profile
    job = {
        "model": case.spec.name,
        "image_size": settings.train_image_size,
        "weights": settings.weights,
        "device": torch.device(settings.device).type,
        "world_size": world_size,
        "points": [{"kind": p.kind, "per_rank_batch": p.per_rank_batch(case.batch_size)} for p in points],
        "variant": case.variant.name,
        "check": case.variant.check,
        "config": case.variant.apply.config.as_dict(),
        "threads": threads_per_rank(settings),
        "timeout_s": max(60.0, settings.dist_timeout_s / 2),
        "timing": {
            "warmup_rounds": profile.warmup_rounds,
            "budget_s": profile.timing_budget_s,
            "min_rounds": profile.min_rounds,
            "max_rounds": profile.max_rounds,
        },
    }
    with tempfile.TemporaryDirectory(prefix="nn-dist-") as where:
        where = Path(where)
        (where / "job.json").write_text(json.dumps(job))
        target = ["-m", "harness.distributed_worker", "--job", str(where / "job.json"), "--out", str(where / "out.json")]
        result = check_launch(launch(target, world_size, settings.dist_timeout_s, job["threads"], where / "logs"))
        out = json.loads((where / "out.json").read_text())
    out["launch_s"] = result.elapsed_s
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
    from harness.bench import case_fields, timing_fields

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
    reference = out if scaling.world_size == 1 else run_job(case, 1, settings)
    base_case = case if case.variant.name == DDP.name else _with_variant(case, DDP)
    base = run_job(base_case, 1, settings)
    if not base["ok"]:
        raise DistributedJobError(f"the ddp baseline at world size 1 failed: {base['error']}")
    point = _point(out, scaling.kind)
    rounds_s = slowest_rank_times(point)
    summary = timing.summarize(rounds_s)
    total = images_per_s(out, scaling.kind)
    reference_rate = images_per_s(reference, "reference") if reference["ok"] else None
    base_rate = images_per_s(base, "reference")
    world = scaling.world_size
    rank_rates = [point["per_rank_batch"] / statistics.median(times) for times in point["rank_times_s"]]
    comm = point["comm"]
    peaks_device = point["peak_device_mb"]
    record = {
        **case_fields(case, settings.profile.name),
        "image_size": settings.train_image_size,
        "world_size": world,
        "scaling": scaling.kind,
        "per_rank_batch_size": point["per_rank_batch"],
        "global_batch_size": point["per_rank_batch"] * world,
        "backend": out["backend"],
        **timing_fields(summary),
        "samples_per_s": total,
        "images_per_s": total,
        "images_per_s_per_rank": total / world,
        "images_per_s_by_rank": rank_rates,
        "eager_median_ms": statistics.median(slowest_rank_times(_point(base, "reference"))) * 1e3,
        "speedup_vs_eager": total / base_rate,
        "baseline": f"ddp at world size 1, batch {case.batch_size}",
        "ideal_images_per_s": world * reference_rate if reference_rate else None,
        "scaling_efficiency": total / (world * reference_rate) if reference_rate else None,
        "comm_share": statistics.fmean(c["share"] for c in comm),
        "comm_share_by_rank": [c["share"] for c in comm],
        "comm_ms": statistics.fmean(c["comm_ms"] for c in comm),
        "profiled_step_ms": max(c["step_ms"] for c in comm),
        "peak_device_mb": max(peaks_device) if all(p is not None for p in peaks_device) else None,
        "peak_device_mb_by_rank": peaks_device,
        "peak_host_mb": max(point["peak_host_mb"]),
        "peak_host_mb_by_rank": point["peak_host_mb"],
        "params": out["params"],
        "compile_s": max(0.0, out["first_step_s"] - summary.median_ms / 1e3),
        "threads": out["threads"],
        "launch_s": out["launch_s"],
        **out["check"],
        **{f"info_{k}": v for k, v in out["info"].items()},
    }
    return record, rounds_s


def _with_variant(case, variant: Variant):
    from dataclasses import replace

    return replace(case, variant=variant)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.distributed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="say whether torchrun jobs can run here, and how many")
    args = parser.parse_args(argv)
    problem = torchrun_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print(f"torchrun: {' '.join(torchrun_command())}")
    print(f"gloo: {torch.distributed.is_gloo_available()}, nccl: {torch.distributed.is_nccl_available()}")
    print(f"ranks on this node: CPU {max_world_size('cpu')}, CUDA {max_world_size('cuda')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""torch.distributed plumbing shared by the distributed bench and nn_speedups.train: launching torchrun jobs and
cleaning up after them, joining a process group inside a rank, the world sizes a node can hold.

`launch` runs `torchrun --standalone` (its rendezvous on a free port torchrun picks) as a subprocess from the pytest
process or a test; the ranks call `init_group`. The bench's cases are built on it in nn_speedups.distributed.bench.

Robustness: ranks run with a process-group timeout (a rank that hangs makes the others' collectives fail), torchrun
ends every rank once one fails and reports the first failure (its error file, written by `@record`), and `launch`
kills whatever is left of the job (torchrun and every process it started, seen or polled while it ran) when the job
outlives its timeout, so no run leaves orphans or hangs CI.

    python -m nn_speedups.distributed       # can this machine launch torchrun jobs, and how many ranks?
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nn_speedups.core.capabilities import TorchrunMissing, torchrun_command, torchrun_problem

__all__ = ["TorchrunMissing", "torchrun_command", "torchrun_problem"]  # re-exported: the launcher's own names

# the folder `import nn_speedups` resolved from (a checkout's root, site-packages, a pip --target folder): put on the
# ranks' PYTHONPATH so that each rank imports the very package that launched it, installed or not
PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_JOB_TIMEOUT_S = 600.0  # a whole torchrun job, startup included (--dist-timeout)
KILL_GRACE_S = 10.0  # after SIGTERM to torchrun (it stops its ranks), before SIGKILL to everything left
POLL_S = 0.25


class DistributedJobError(AssertionError):
    """A torchrun job that failed, timed out or reported a failed check; the message starts with a one-line summary
    (which rank, what error) and carries the first failure's details."""


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


def _terminate_with_parent() -> None:
    """In the torchrun child, before it runs: on Linux, SIGTERM when the launching process dies, even by SIGKILL
    (a CI job's timeout), so torchrun stops its ranks instead of leaving them behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def launch(
    target: list[str],
    nproc: int,
    timeout_s: float,
    threads: int = 1,
    log_dir: Path | None = None,
    env: dict | None = None,
    cwd: Path | None = None,
) -> LaunchResult:
    """Run `torchrun --standalone --nproc-per-node NPROC TARGET...` (TARGET: `-m module args` or `script args`) in
    `cwd` (default: the caller's) with OMP_NUM_THREADS=threads and PACKAGE_ROOT first on PYTHONPATH; returns its
    exit code and output. Raises DistributedJobError
    when it outlives `timeout_s`, after killing it and every process it started."""
    import psutil

    command = [*torchrun_command(), "--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0"]
    command += ["--monitor-interval=0.5", *target]
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="nn-dist-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    python_path = os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    full_env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": python_path, **(env or {})}
    out_path, err_path = log_dir / "torchrun.out", log_dir / "torchrun.err"
    start = time.monotonic()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=err,
            cwd=cwd,
            env=full_env,
            start_new_session=True,
            preexec_fn=_terminate_with_parent,
        )
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


_REPORT = re.compile(r"\nFailures:\n(.*?)\n-{20,}\nRoot Cause \(first observed failure\):\n(.*?)\n={20,}", re.S)
_ENTRY = re.compile(r"^\[\d+\]:\n", re.M)
# what a rank shows when it failed because another did: the agent's SIGTERM, or its peer's socket closing
_CONSEQUENCES = ("closed by peer", "reset by peer", "Broken pipe")


@dataclass(frozen=True)
class RankFailure:
    rank: str
    pid: str
    exitcode: str
    signal: str | None
    error: str  # the last line of its traceback, or the signal it received
    text: str

    @property
    def consequence(self) -> bool:
        return self.signal == "SIGTERM" or any(mark in self.error for mark in _CONSEQUENCES)

    def line(self) -> str:
        how = f"{self.exitcode}, {self.signal}" if self.signal else self.exitcode
        return f"rank {self.rank} (pid {self.pid}) failed (exit code {how}): {self.error}"


def _failures(block: str) -> list[RankFailure]:
    out = []
    for text in _ENTRY.split(block):
        if "exitcode" not in text:
            continue
        rank = re.search(r"rank\s*:\s*(\d+)", text)
        code = re.search(r"exitcode\s*:\s*(-?\d+)\s*\(pid: (\d+)\)\s*(?:\((\w+)\))?", text)
        traceback = text.split("traceback :", 1)[-1].strip().splitlines()
        error = next((line.strip() for line in reversed(traceback) if line.strip()), "")
        exitcode, pid, sig = code.groups() if code else ("?", "?", None)
        out.append(RankFailure(rank.group(1) if rank else "?", pid, exitcode, sig, error, text.rstrip()))
    return out


def failure_summary(result: LaunchResult) -> str:
    """One line naming the rank that failed and its error, then torchrun's report of it (the rank's error file: its
    traceback, or the signal that killed it) and of the others.

    torchrun's "root cause" is the failure with the earliest timestamp, which can be a rank that only saw its peer
    vanish (a rank killed by a signal writes no error file and is timestamped when the agent notices); a failure
    that is not such a consequence (the agent's SIGTERM, a peer's closed socket) is named first. Ranks stopped by
    the agent's SIGTERM were still running when the job ended: after a collective timed out, they include the one
    that hung."""
    match = _REPORT.search(result.stderr) or _REPORT.search(result.stdout)
    if not match:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        return f"torchrun exited with code {result.returncode}:\n{tail}"
    root = _failures(match.group(2))
    others = _failures(match.group(1))
    ordered = sorted(root + others, key=lambda f: f.consequence)  # stable: torchrun's root cause first among equals
    if not ordered:
        return f"torchrun exited with code {result.returncode}:\n{match.group(0)}"
    first = ordered[0]
    stopped = [f.rank for f in ordered if f.signal == "SIGTERM" and f is not first]
    note = f"; still running when the job was stopped: rank {', '.join(stopped)}" if stopped else ""
    details = "\n".join(f.text for f in ordered)
    return f"{first.line()}{note}\n{details}"


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


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m nn_speedups.distributed", description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    problem = torchrun_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print(f"torchrun: {' '.join(torchrun_command())}")
    print(f"gloo: {torch.distributed.is_gloo_available()}, nccl: {torch.distributed.is_nccl_available()}")
    print(f"ranks on this node: CPU {max_world_size('cpu')}, CUDA {max_world_size('cuda')}")
    return 0

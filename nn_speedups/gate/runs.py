"""Saved runs for the regression gate (nn_speedups.gate): loading and checking pytest-benchmark JSON files, the machine
they ran on, and re-running chosen cases by node id in fresh pytest processes (`--confirm`, `--aa-study`).

Never imports torch or pytest: the gate must start fast and read runs from any machine.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nn_speedups.report import run_record

SAVE_HINT = "save runs with `pytest benches/ --benchmark-autosave --benchmark-save-data` (or --benchmark-json=PATH)"


class GateError(Exception):
    """Bad input for the gate: one line that names the problem and the fix."""


@dataclass
class CaseRun:
    """One case (a pytest node id) in one saved run."""

    name: str  # the node id (pytest-benchmark's "fullname")
    short: str  # the test name with its parameters
    info: dict  # extra_info: the suite's fields (family, device, median_ms, info_graph_breaks, top1, ...)
    times: list[float] | None  # seconds per round, when the run was saved with --benchmark-save-data
    median_s: float
    iqr_s: float
    rounds: int

    @property
    def family(self) -> str:
        return str(self.info.get("family") or "unknown")

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3


@dataclass
class Run:
    path: str
    machine_info: dict
    cases: dict[str, CaseRun]
    failed: dict[str, str] = field(default_factory=dict)  # node id -> message (runs saved by this suite's plugin)
    skipped: dict[str, str] = field(default_factory=dict)  # node id -> reason
    meta: dict | None = None  # the plugin's "nn_speedups" block: rootdir, rerun_args, outcomes

    @property
    def has_data(self) -> bool:
        return all(c.times is not None for c in self.cases.values())

    @property
    def device(self) -> str:
        return str((self.machine_info.get("nn_speedups") or {}).get("device") or "cpu")


def resolve(path: str | Path) -> Path:
    """A run file, or the newest pytest-benchmark run under a storage folder (e.g. .benchmarks)."""
    path = Path(path)
    if path.is_dir():
        found = [p for p in path.rglob("*.json") if re.match(r"\d{4}_", p.name)]
        if not found:
            raise GateError(f"{path}: a folder with no saved runs (NNNN_*.json) in it; {SAVE_HINT}")
        return max(found, key=lambda p: (int(p.name[:4]), p.stat().st_mtime))
    if not path.exists():
        raise GateError(f"{path}: no such file; {SAVE_HINT}")
    return path


def _number(value, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise GateError(f"{where}: {what} is {value!r}, not a time; is this a pytest-benchmark run?")
    return float(value)


def load_run(path: str | Path) -> Run:
    """Read and check one saved run; every problem is a GateError naming the file and the fix."""
    path = resolve(path)
    try:
        raw = run_record.load(path, SAVE_HINT)  # a JSON object with 'benchmarks' and 'machine_info', or one line
    except run_record.RecordError as error:
        raise GateError(str(error)) from None
    cases = {}
    for i, bench in enumerate(raw["benchmarks"]):
        where = f"{path}: benchmark {i}"
        if not isinstance(bench, dict) or not isinstance(bench.get("stats"), dict):
            raise GateError(f"{where} has no 'stats': not a pytest-benchmark run; {SAVE_HINT}")
        name = bench.get("fullname") or bench.get("name")
        if not isinstance(name, str):
            raise GateError(f"{where} has no name: not a pytest-benchmark run; {SAVE_HINT}")
        stats = bench["stats"]
        data = stats.get("data")
        times = None
        if data is not None:
            if not isinstance(data, list) or not data:
                raise GateError(f"{where} ({name}): 'data' is not a list of round times")
            times = [_number(t, "a round time", f"{where} ({name})") for t in data]
            if min(times) <= 0:
                raise GateError(f"{where} ({name}): a round took no time; the data is not round times")
        median = _number(stats.get("median"), "the median", f"{where} ({name})")
        iqr = _number(stats.get("iqr", 0.0), "the IQR", f"{where} ({name})")
        rounds = int(_number(stats.get("rounds", len(times or [])), "the round count", f"{where} ({name})"))
        if times is not None:
            median, rounds = statistics.median(times), len(times)
        if median <= 0:
            raise GateError(f"{where} ({name}): median time {median}: not a timing")
        info = bench.get("extra_info") if isinstance(bench.get("extra_info"), dict) else {}
        cases[name] = CaseRun(name, str(bench.get("name") or name), info, times, median, iqr, rounds)
    meta = raw.get("nn_speedups") if isinstance(raw.get("nn_speedups"), dict) else None
    failed = dict((meta or {}).get("failed") or {})
    if not cases and not failed:
        raise GateError(f"{path}: a pytest-benchmark run with no benchmarks in it (did every test skip?)")
    return Run(str(path), raw["machine_info"], cases, failed, dict((meta or {}).get("skipped") or {}), meta)


# ------------------------------------------------------------------------------------------------ the machine

# What makes absolute times comparable: the hardware and what the suite was asked to measure.
HARDWARE_KEYS = ("cpu_model", "cpu_count", "gpu_name", "gpu_memory_mb")
SETUP_KEYS = ("profile", "device", "image_size")


def identity(machine_info: dict) -> dict:
    """The machine (hardware) and set-up (profile, device, image size) a run's absolute times belong to."""
    cpu = machine_info.get("cpu") if isinstance(machine_info.get("cpu"), dict) else {}
    hardware = {
        "cpu_model": machine_info.get("cpu_model") or cpu.get("brand_raw"),
        "cpu_count": machine_info.get("cpu_count") or cpu.get("count"),
        "gpu_name": machine_info.get("gpu_name"),
        "gpu_memory_mb": machine_info.get("gpu_memory_mb"),
    }
    setup = machine_info.get("nn_speedups") if isinstance(machine_info.get("nn_speedups"), dict) else {}
    return {
        **{k: hardware[k] for k in HARDWARE_KEYS},
        **{k: setup.get(k) for k in SETUP_KEYS},
        "node": machine_info.get("node"),
        "torch": (machine_info.get("versions") or {}).get("torch"),
    }


def differences(a: dict, b: dict) -> tuple[list[str], list[str]]:
    """(refusals, notes) between two identities: other hardware or set-up refuses; another host name or torch is a
    note (CI runners get new host names; a torch upgrade is a change worth gating)."""
    refuse, notes = [], []
    for key in HARDWARE_KEYS + SETUP_KEYS:
        if a.get(key) is not None and b.get(key) is not None and a.get(key) != b.get(key):
            refuse.append(f"{key} {a[key]!r} vs {b[key]!r}")
    for key in ("node", "torch"):
        if a.get(key) is not None and b.get(key) is not None and a.get(key) != b.get(key):
            notes.append(f"{key} {a[key]!r} vs {b[key]!r}")
    return refuse, notes


def check_same_machine(runs: list[Run], allow_change: bool) -> list[str]:
    """Refuse runs from different machines or set-ups (absolute times do not carry) unless allowed; return notes."""
    notes: list[str] = []
    first = identity(runs[0].machine_info)
    for other in runs[1:]:
        refuse, note = differences(first, identity(other.machine_info))
        where = f"{Path(runs[0].path).name} vs {Path(other.path).name}"
        if refuse and not allow_change:
            raise GateError(
                f"{where}: different machines or set-ups ({'; '.join(refuse)}): absolute times do not carry across "
                "them; compare runs of one machine and profile, or pass --allow-machine-change to compare anyway"
            )
        if refuse:
            notes.append(f"machine or set-up changed ({'; '.join(refuse)}): compared anyway (--allow-machine-change)")
        if note:
            notes.append(f"{where}: {'; '.join(note)}")
    return notes


# ------------------------------------------------------------------------------------------------ re-running

# nn_speedups.measure.timing.INJECT_SLOWDOWN_ENV, not imported from there: nn_speedups.measure.timing loads torch.
INJECT_ENV = "NN_SPEEDUPS_INJECT_SLOWDOWN"
# Options a re-run must not inherit: where results go, what is compared, re-selection of tests.
DROPPED_OPTIONS = ("--benchmark-autosave", "--benchmark-save", "--benchmark-json", "--benchmark-compare", "--lf")


def rerun_command(node_ids: list[str], args: list[str], json_path: Path, report_dir: Path, root: Path) -> list[str]:
    """The pytest command that re-runs `node_ids` with the original run's options. Paths go in --opt=value form
    and the root folder is explicit: pytest would otherwise take an existing folder among the arguments as a
    candidate root and rename every node id."""
    kept = [a for a in args if not a.startswith(DROPPED_OPTIONS)]
    if "no:cacheprovider" not in kept:
        kept += ["-p", "no:cacheprovider"]
    return [sys.executable, "-m", "pytest", *node_ids, *kept, "-q", "-rf", f"--rootdir={root}",
            f"--benchmark-json={json_path}", f"--report-dir={report_dir}"]  # fmt: skip


def run_pytest(
    args: list[str], json_path: Path, cwd: str | Path, env: dict | None = None, log: Callable[[str], None] = print
) -> Run:
    """One fresh pytest process writing `json_path`; its Run (failed cases included), or a GateError with the output's
    tail when it wrote none."""
    command = [sys.executable, "-m", "pytest", *args, f"--benchmark-json={json_path}"]
    return _run(command, json_path, cwd, env, log)


def _run(command: list[str], json_path: Path, cwd, env, log) -> Run:
    shown = ["python", *command[1:]]  # the full interpreter path is noise in a log
    log(f"  $ (cd {cwd} && {' '.join(_quote(c) for c in shown)})")
    done = subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if not Path(json_path).exists():
        # pytest-benchmark writes no file when no benchmark finished: every selected case failed or skipped
        failed = dict(re.findall(r"^FAILED (\S+) - (.*)$", done.stdout, flags=re.MULTILINE))
        if done.returncode == 1 and failed:
            return Run(str(json_path), {}, {}, failed=failed)
        tail = (done.stdout + done.stderr).strip().splitlines()[-8:]
        raise GateError(f"pytest exited {done.returncode} without writing {json_path}: " + " | ".join(tail))
    return load_run(json_path)


def launcher(
    head: Run,
    baseline_dir: str | Path | None,
    workdir: str | Path,
    rootdir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> Callable[[list[str], str, int], Run]:
    """The function --confirm calls for each fresh process: launch(node_ids, side, index) re-runs `node_ids` in a new
    pytest process with the options `head` was run with (recorded by the plugin), in the head's root folder
    (side "head") or in `baseline_dir`, a checkout of the baseline's commit (side "baseline"), writing its run under
    `workdir`. Tests replace it with one that returns recorded runs."""
    meta = head.meta or {}
    if "rerun_args" not in meta:
        raise GateError(
            f"{head.path}: the run does not record how to re-run its cases (saved without this suite's plugin, or "
            "before nn_speedups.gate existed); run the head again with this version, or gate without --confirm"
        )
    root = Path(rootdir or meta.get("rootdir") or ".")
    if not root.is_dir():
        log(f"  the head's root folder {root} is not here: re-running from {Path.cwd()}")
        root = Path.cwd()

    def launch(node_ids: list[str], side: str, index: int) -> Run:
        if side == "baseline" and baseline_dir is None:
            raise GateError("a baseline re-run needs --confirm-baseline DIR (a checkout of the baseline's commit)")
        where = Path(baseline_dir) if side == "baseline" else root
        path = Path(workdir) / f"{side}-{index}.json"
        command = rerun_command(node_ids, list(meta["rerun_args"]), path, Path(workdir) / "reports", where)
        return _run(command, path, where, None, log)

    return launch


def _quote(arg: str) -> str:
    return f"'{arg}'" if re.search(r"[\s\[\]*?;&|<>()]", arg) else arg

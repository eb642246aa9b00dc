"""Two runs' records side by side: what each was measured with (machine, set-up, versions, the installed set's hash,
threads and the environment's speed settings, the CPU governor, Inductor's cache cold or warm, the seeds, the
command line, the commit and whether the tree was dirty), flattened, diffed and rendered.

    nn-speedups report --diff A.json B.json      (python -m nn_speedups.report --diff A.json B.json)

The record is captured when a run starts (nn_speedups.core.env.run_record, saved as machine_info["record"]); the
commit is pytest-benchmark's commit_info. A run saved before records existed is compared on what its machine_info
has. Never imports torch: the gate (nn_speedups.gate) shows the differences above its verdicts.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

NO_RECORD = "no record (saved before nn-speedups recorded one)"
SAVE_HINT = "give a run pytest-benchmark saved (.benchmarks/<machine>/NNNN_*.json, or --benchmark-json=PATH)"
MACHINE_KEYS = ("node", "cpu_model", "cpu_count", "cpu_isa", "torch_cpu_capability", "gpu_name", "gpu_memory_mb",
                "gpu_driver", "cuda_runtime", "cudnn")  # fmt: skip
SETUP_KEYS = ("profile", "device", "image_size")
COMMIT_KEYS = ("id", "dirty", "branch")
GATE_IGNORED = ("commit.id", "commit.branch")  # a gate compares two commits on purpose
_MISSING = object()


class RecordError(ValueError):
    """A file that is not a pytest-benchmark run: one line that names the problem and the fix."""


def load(path: str | Path, hint: str = SAVE_HINT) -> dict:
    """A saved run, checked enough to diff or gate: a JSON object with a 'benchmarks' list and a 'machine_info'
    object; every problem a RecordError of one line ending in `hint` (the gate gives its own)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{path}: no such file; {hint}") from None
    except IsADirectoryError:
        raise RecordError(f"{path}: a folder, not a run file; {hint}") from None
    except UnicodeDecodeError:
        raise RecordError(f"{path}: not a text file, so not a pytest-benchmark run; {hint}") from None
    except json.JSONDecodeError as error:
        raise RecordError(f"{path}: not JSON ({error.msg} at line {error.lineno}); {hint}") from None
    except OSError as error:
        raise RecordError(f"{path}: cannot read it ({error.strerror}); {hint}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("benchmarks"), list):
        raise RecordError(f"{path}: not a pytest-benchmark run (no 'benchmarks' list); {hint}")
    if not isinstance(raw.get("machine_info"), dict):
        raise RecordError(f"{path}: not a pytest-benchmark run (no 'machine_info'); {hint}")
    return raw


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def has_record(run: dict) -> bool:
    return isinstance(_dict(run.get("machine_info")).get("record"), dict)


def view(run: dict) -> dict[str, object]:
    """A run's record as flat `section.name -> value` pairs, in the order they are shown; only what it recorded."""
    m = _dict(run.get("machine_info"))
    out: dict[str, object] = {f"machine.{k}": m[k] for k in MACHINE_KEYS if k in m}
    out |= {f"setup.{k}": v for k, v in _dict(m.get("nn_speedups")).items() if k in SETUP_KEYS}
    out |= {f"versions.{k}": v for k, v in sorted(_dict(m.get("versions")).items())}
    if "torch_threads" in m:  # runs before the record saved torch's thread count here
        out["threads.torch"] = m["torch_threads"]
    if m.get("python") or m.get("python_version"):
        out["python.version"] = m.get("python") or m.get("python_version")
    record = _dict(m.get("record"))
    if record:
        freeze = _dict(record.get("freeze"))
        out |= {f"freeze.{k}": freeze.get(k) for k in ("sha256", "packages")}
        out |= {f"threads.{k}": v for k, v in _dict(record.get("threads")).items()}
        out |= {f"env.{k}": v for k, v in sorted(_dict(record.get("env")).items())}
        out["cpu_governor"] = record.get("cpu_governor")
        out |= {f"python.{k}": v for k, v in _dict(record.get("python")).items()}
        cache = _dict(record.get("inductor_cache"))
        out |= {"inductor_cache.state": cache.get("state"), "inductor_cache.dir": cache.get("dir")}
        out |= {f"seeds.{k}": v for k, v in _dict(record.get("seeds")).items()}
        command = record.get("command")
        out["command"] = shlex.join(map(str, command)) if isinstance(command, list) else command
        out["cwd"] = record.get("cwd")
    out |= {f"commit.{k}": v for k, v in _dict(run.get("commit_info")).items() if k in COMMIT_KEYS}
    return out


def diff(a: dict, b: dict, ignore: tuple[str, ...] = ()) -> list[tuple[str, object, object]]:
    """(key, a's value, b's value) for every recorded setting that differs, in view order; a key a run without a
    record could not have recorded is left out (its machine_info is still compared), and ("record", ...) comes first
    when only one run has a record. A value a run did not record is None."""
    va, vb = view(a), view(b)
    ra, rb = has_record(a), has_record(b)
    out: list[tuple[str, object, object]] = []
    if ra != rb:
        out.append(("record", "recorded" if ra else NO_RECORD, "recorded" if rb else NO_RECORD))
    for key in list(va) + [k for k in vb if k not in va]:
        if key in ignore or (key not in va and not ra) or (key not in vb and not rb):
            continue
        x, y = va.get(key, _MISSING), vb.get(key, _MISSING)
        if x != y:
            out.append((key, None if x is _MISSING else x, None if y is _MISSING else y))
    return out


def cell(value, key: str = "") -> str:
    """A value as a table cell: '-' for nothing recorded ('(unset)' for an environment variable), lists joined,
    hashes cut to 16 hex digits."""
    if value is None:
        return "(unset)" if key.startswith("env.") else "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "-"
    if key == "freeze.sha256":
        return str(value)[:16]
    return str(value)


def render_diff(a: dict, b: dict, a_name: str = "A", b_name: str = "B", ignore: tuple[str, ...] = ()) -> str:
    """The records' differences as a short markdown table, or "records identical"; a missing record said first."""
    from nn_speedups.core.markdown import table

    lines = [f"Run records: {a_name} vs {b_name}"]
    lines += [f"{name}: {NO_RECORD}; its machine_info is compared (run it again with this version to record one)"
              for name, run in ((a_name, a), (b_name, b)) if not has_record(run)]  # fmt: skip
    found = diff(a, b, ignore)
    if not found:
        return "\n".join(lines + ["records identical"]) + "\n"
    lines.append(f"{len(found)} difference(s):\n")
    body = [[key, cell(x, key), cell(y, key)] for key, x, y in found]
    return "\n".join(lines) + "\n" + table(["setting", a_name, b_name], body)


def differences_line(found: list[tuple[str, object, object]], limit: int = 8) -> list[str]:
    """Each difference as `key: a -> b`, at most `limit` of them and a count of the rest (the gate's block)."""
    shown = [f"{key}: {cell(x, key)} -> {cell(y, key)}" for key, x, y in found[:limit]]
    if len(found) > limit:
        shown.append(f"... and {len(found) - limit} more (nn-speedups report --diff BASELINE HEAD lists them)")
    return shown


def summary_line(run: dict) -> str:
    """One line of a run's record for the end of a run: commit, installed set, threads, governor, Inductor's cache."""
    values = view(run)
    if not has_record(run):
        return f"Run record: {NO_RECORD}"
    commit = values.get("commit.id")
    parts = [f"commit {str(commit)[:12]}{' (dirty)' if values.get('commit.dirty') else ''}" if commit else "no commit"]
    digest = cell(values.get("freeze.sha256"), "freeze.sha256")
    parts.append(f"{values.get('freeze.packages')} packages (sha256 {digest})")
    parts.append(f"threads {values.get('threads.torch')}, interop {values.get('threads.interop')}")
    parts.append(f"governor {cell(values.get('cpu_governor'))}")
    parts.append(f"Inductor cache {values.get('inductor_cache.state')} ({values.get('inductor_cache.dir')})")
    speed = [k.removeprefix("env.") for k in values if k.startswith("env.")]
    parts.append(f"env {', '.join(speed)}" if speed else "no speed env vars")
    return "Run record: " + "; ".join(parts)


def diff_command(a_path: str, b_path: str, out=None) -> int:
    """`--diff A B`: the records' differences, then (when both have benchmarks) B's medians against A's."""
    out = out or sys.stdout
    try:
        a, b = load(a_path), load(b_path)
    except RecordError as error:
        print(f"nn_speedups.report: error: {error}", file=sys.stderr)
        return 2
    a_name, b_name = Path(a_path).name, Path(b_path).name
    if a_name == b_name:
        a_name, b_name = str(a_path), str(b_path)
    print(render_diff(a, b, a_name, b_name), file=out)
    if a["benchmarks"] and b["benchmarks"]:
        from nn_speedups.report.compare import comparison_table
        from nn_speedups.report.records import rows

        print(f"### {b_name} against {a_name} (the baseline)\n", file=out)
        print(comparison_table(rows(b), rows(a)), file=out)
    return 0

"""The run record: what a run was measured with, saved in its JSON, and `report --diff A B` / the gate showing what
differs between two runs' records before any timing. Runs here are built as pytest-benchmark saves them; one real
run (the session's tiny_run) shows the record is captured."""

import copy
import json
import os
import subprocess
import sys

from nn_speedups.core import env
from nn_speedups.report import run_record
from tests.conftest import ROOT


def _saved(**changes) -> dict:
    record = {
        "freeze": {"sha256": "a" * 64, "packages": 120},
        "threads": {"torch": 2, "interop": 2},
        "env": {"OMP_NUM_THREADS": "2"},
        "cpu_governor": None,
        "python": {"version": "3.11.9", "executable": "/x/.venv/bin/python"},
        "inductor_cache": {"dir": "/tmp/torchinductor_u", "state": "cold", "entries": 0},
        "seeds": {"model_weights": 0, "example_inputs": 0},
        "command": ["pytest", "benches/"],
        "cwd": "/x",
    }
    run = {
        "machine_info": {"node": "n", "cpu_model": "AMD EPYC", "cpu_count": 2, "versions": {"torch": "2.14.1"},
                         "nn_speedups": {"profile": "quick", "device": "cpu"}, "record": record},
        "commit_info": {"id": "1" * 40, "dirty": False, "branch": "main"},
        "benchmarks": [],
    }  # fmt: skip
    for path, value in changes.items():  # "record.threads.torch" is machine_info's; "commit.dirty" commit_info's
        *parents, last = path.split(".")
        where = run["commit_info"] if parents == ["commit"] else run["machine_info"]
        for key in [] if parents == ["commit"] else parents:
            where = where[key]
        where[last] = value
    return run


def test_the_installed_set_hash_ignores_order_and_sees_one_version_change():
    lines = ["torch==2.14.1", "numpy==2.3.0", "onnx==1.19.0"]
    assert env.freeze_hash(lines) == env.freeze_hash(reversed(lines))
    assert env.freeze_hash(lines) != env.freeze_hash(["torch==2.14.0", "numpy==2.3.0", "onnx==1.19.0"])
    assert len(env.freeze_lines()) > 20 and any(line.startswith("torch==") for line in env.freeze_lines())


def test_the_speed_settings_are_the_thread_inductor_and_gpu_variables_only():
    environ = {"OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": "/c", "CUDA_VISIBLE_DEVICES": "0", "HOME": "/h",
               "MKL_NUM_THREADS": "1", "PATH": "/bin"}  # fmt: skip
    assert env.speed_env(environ) == {"CUDA_VISIBLE_DEVICES": "0", "MKL_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                                      "TORCHINDUCTOR_CACHE_DIR": "/c"}  # fmt: skip


def test_inductors_cache_is_cold_when_missing_or_empty_and_warm_with_entries(tmp_path):
    assert env.inductor_cache(str(tmp_path / "none"))["state"] == "cold"
    assert env.inductor_cache(str(tmp_path))["state"] == "cold"
    (tmp_path / "fxgraph").mkdir()
    assert env.inductor_cache(str(tmp_path)) == {"dir": str(tmp_path), "state": "warm", "entries": 1}
    governor = tmp_path / "scaling_governor"
    governor.write_text("performance\n")
    assert env.cpu_governor(str(governor)) == "performance"
    assert env.cpu_governor(str(tmp_path / "absent")) is None


def test_the_diff_lists_exactly_what_changed():
    a = _saved()
    b = _saved(**{"record.threads.torch": 1, "record.inductor_cache.state": "warm", "commit.dirty": True})
    b["machine_info"]["record"]["env"]["TORCHINDUCTOR_FREEZING"] = "1"
    b["machine_info"]["versions"]["torch"] = "2.14.0"
    found = {key: (x, y) for key, x, y in run_record.diff(a, b)}
    assert found == {"versions.torch": ("2.14.1", "2.14.0"), "threads.torch": (2, 1),
                     "env.TORCHINDUCTOR_FREEZING": (None, "1"), "inductor_cache.state": ("cold", "warm"),
                     "commit.dirty": (False, True)}  # fmt: skip
    assert run_record.diff(a, copy.deepcopy(a)) == []
    assert "records identical" in run_record.render_diff(a, copy.deepcopy(a))
    text = run_record.render_diff(a, b, "A.json", "B.json")
    assert "5 difference(s)" in text and "| env.TORCHINDUCTOR_FREEZING | (unset) | 1 |" in text


def test_a_run_saved_before_records_is_said_first_and_compared_on_its_machine_info():
    old = _saved()
    del old["machine_info"]["record"]
    old["machine_info"]["cpu_count"] = 4
    found = run_record.diff(old, _saved())
    assert found[0] == ("record", run_record.NO_RECORD, "recorded")
    assert ("machine.cpu_count", 4, 2) in found
    assert all(not key.startswith(("threads.interop", "freeze.", "seeds.")) for key, _, _ in found)


def test_report_diff_shows_the_records_before_the_medians_and_bad_files_get_one_line(tmp_path):
    a, b = _saved(), _saved(**{"record.threads.torch": 1})
    bench = {"name": "test_inference[resnet18-bs1-eager-fp32]", "group": "g",
             "stats": {"median": 0.01, "rounds": 20, "mean": 0.01},
             "extra_info": {"family": "inference", "model": "resnet18", "variant": "eager", "dtype": "fp32",
                            "batch_size": 1, "median_ms": 10.0, "device": "cpu"}}  # fmt: skip
    a["benchmarks"] = [bench]
    b["benchmarks"] = [copy.deepcopy(bench)]
    (tmp_path / "A.json").write_text(json.dumps(a))
    (tmp_path / "B.json").write_text(json.dumps(b))
    (tmp_path / "bad.json").write_text("{not json")
    command = [sys.executable, "-m", "nn_speedups.report", "--diff"]
    shown = subprocess.run([*command, "A.json", "B.json"], cwd=tmp_path, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.index("| threads.torch | 2 | 1 |") < shown.stdout.index("against A.json (the baseline)")
    bad = subprocess.run([*command, "A.json", "bad.json"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().count("\n") == 0 and "bad.json: not JSON" in bad.stderr and "benchmark-json" in bad.stderr


def test_a_real_run_saves_its_record(tiny_run):
    _, saved, where = tiny_run
    record = saved["machine_info"]["record"]
    fresh = subprocess.run([sys.executable, "-c", "from nn_speedups.core import env; "
                            "print(env.freeze_hash(env.freeze_lines()))"], capture_output=True, text=True,
                           cwd=where, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert record["freeze"]["sha256"] == fresh.stdout.strip()  # the venv's set, as a fresh interpreter sees it
    assert record["inductor_cache"]["state"] in ("cold", "warm") and record["inductor_cache"]["dir"]
    assert record["threads"]["torch"] >= 1 and record["cwd"] == str(where) and record["process_start_s"] > 0
    assert "--variants" in record["pytest_args"]
    assert set(record["seeds"]) == {"model_weights", "example_inputs", "calibration_inputs", "synthetic_data"}
    assert saved["commit_info"].get("id") or saved["commit_info"].get("error")
    assert run_record.diff(saved, copy.deepcopy(saved)) == []

"""The project's own files, by what they run: the workflows lint clean against GitHub's schema, and every command that
the Makefile and the GPU workflow would run is taken apart by the parsers that will read it (the suite's and
pytest-benchmark's pytest options, nn_speedups.gate's command line): the options exist, the bench runs keep the
rounds the gate needs, and the gate reads the very files the bench runs write."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import os
import shlex
import shutil
import subprocess

import pytest
import yaml
from pytest_benchmark import plugin as benchmark_plugin

from nn_speedups import gate
from nn_speedups.plugin import options as suite_options
from tests.conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
DEFAULT_STORAGE = ".benchmarks"  # pytest-benchmark's file://./.benchmarks


def test_both_workflows_exist():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "gpu-bench.yml"}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_lints_against_the_github_schema(workflow):
    tool = shutil.which("check-jsonschema") or str(ROOT / ".venv" / "bin" / "check-jsonschema")
    if not shutil.which(tool):
        pytest.skip("needs check-jsonschema: pip install -e .[dev]")
    result = subprocess.run(
        [tool, "--builtin-schema", "vendor.github-workflows", str(workflow)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------ the commands, parsed


REDIRECTS = (">", ">>", "2>", "2>>", "<")


def _commands(script: str) -> list[list[str]]:
    """A shell script's simple commands, as argument lists: continuation lines joined, `cmd1 || cmd2` split, output
    redirections (`>> FILE`) left out."""
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        line = line.strip().removeprefix("-")  # make's "ignore errors" prefix
        if not line or line.startswith("#"):
            continue
        for part in line.split("||"):
            words, skip = [], False
            for word in shlex.split(part, comments=True):
                if skip or word in REDIRECTS:
                    skip = not skip and word in REDIRECTS
                    continue
                words.append(word)
            if words:
                out.append(words)
    return out


def _module_args(command: list[str], module: str) -> list[str] | None:
    """The arguments after `python -m MODULE`, or None when the command runs something else."""
    for i in range(len(command) - 1):
        if command[i] == "-m" and command[i + 1] == module:
            return command[i + 2 :]
    return None


def _make(target: str, *variables: str) -> list[list[str]]:
    """What `make TARGET` would run (make -n), without the set-up step's commands."""
    if shutil.which("make") is None:
        pytest.skip("needs make")
    result = subprocess.run(
        ["make", "-n", target, *variables], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    return [c for c in _commands(result.stdout) if "pip" not in c and c[:2] != ["test", "-x"] and c[0] != "touch"]


def _pytest_options(args: list[str]):
    """`args` parsed as pytest parses a bench session's command line (the suite's options, pytest-benchmark's): an
    option neither defines is a UsageError."""
    parser = pytest.Parser(_ispytest=True)
    suite_options.pytest_addoption(parser)
    benchmark_plugin.pytest_addoption(parser)
    return parser.parse(args)


def _gate_options(args: list[str]):
    """`args` parsed by `python -m nn_speedups.gate`'s own parser (its PYTEST ARGS after `--` apart)."""
    at = args.index("--") if "--" in args else len(args)
    try:
        return gate.parser().parse_args(args[:at]), args[at + 1 :]
    except SystemExit:
        pytest.fail(f"python -m nn_speedups.gate refuses {shlex.join(args)}")


def _storage(pytest_options) -> str:
    return os.path.normpath(pytest_options.benchmark_storage.removeprefix("file://"))


def _runs(commands: list[list[str]], module: str) -> list[list[str]]:
    return [args for c in commands if (args := _module_args(c, module)) is not None]


def test_make_bench_saves_the_rounds_the_gate_needs():
    (bench,) = _runs(_make("bench"), "pytest")
    parsed = _pytest_options(bench)
    assert parsed.file_or_dir == ["benches/"]
    # autosaved into the default storage, with every round: what `python -m nn_speedups.gate .benchmarks HEAD` reads
    assert parsed.benchmark_autosave and parsed.benchmark_save_data and _storage(parsed) == DEFAULT_STORAGE


def test_make_test_runs_the_self_tests_and_ci_runs_make_lint_and_make_test():
    (tests,) = _runs(_make("test"), "pytest")
    assert tests == ["tests/"]
    ci = _commands((ROOT / ".ci" / "run").read_text())
    assert ["make", "lint"] in ci and ["make", "test"] in ci
    steps = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())["jobs"]["cpu"]["steps"]
    assert [s["run"] for s in steps if "run" in s] == ["make lint", "make test"]


def test_make_gpu_smoke_gates_its_second_run_against_the_baseline_its_first_saved():
    commands = _make("gpu-smoke", "EXTRAS=dev,ort-gpu,trt")
    first, second = (_pytest_options(args) for args in _runs(commands, "pytest"))
    assert first.profile == second.profile == "smoke"
    assert first.benchmark_autosave and first.benchmark_save_data and second.benchmark_save_data
    (gate_args,) = _runs(commands, "nn_speedups.gate")
    parsed, _ = _gate_options(gate_args)
    assert [os.path.normpath(r) for r in parsed.runs] == [_storage(first), os.path.normpath(second.benchmark_json)]


def test_make_gate_aa_runs_the_study_on_bench_options_that_exist():
    (study,) = _runs(_make("gate-aa"), "nn_speedups.gate")
    parsed, pytest_args = _gate_options(study)
    assert parsed.aa_study and parsed.aa_runs > 0 and parsed.inject_runs > 0 and ":" in parsed.inject
    assert _pytest_options(pytest_args).file_or_dir == ["benches/test_inference.py"]


# ------------------------------------------------------------------------------------------ the GPU workflow


def _steps(job: str) -> dict[str, dict]:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "gpu-bench.yml").read_text())
    return {step.get("name") or step["uses"]: step for step in workflow["jobs"][job]["steps"]}


def _step_runs(step: dict, module: str) -> list[list[str]]:
    return _runs(_commands(step["run"]), module)


def test_gpu_workflow_saves_a_baseline_on_main_and_gates_pull_requests_against_it():
    steps = _steps("bench")
    (main,) = _step_runs(steps["Benchmark main and save the baseline"], "pytest")
    main = _pytest_options(main)
    assert main.profile == "full" and main.benchmark_autosave and main.benchmark_save_data
    # the saved baseline is kept between runs and restored for pull requests
    assert steps["Keep the baseline"]["with"]["path"] == _storage(main)
    assert steps["Restore the baseline from main"]["with"]["path"] == _storage(main)
    (head,) = _step_runs(steps["Benchmark the pull request"], "pytest")
    head = _pytest_options(head)
    assert head.profile == "full" and head.benchmark_save_data and head.benchmark_json
    gate_step = steps["Gate the pull request against the baseline"]
    (gate_args,) = _step_runs(gate_step, "nn_speedups.gate")
    thresholds = ["--thresholds", ".github/gate-thresholds.json"]  # what "${thresholds[@]}" holds when the file exists
    for expansion in ([], thresholds):
        args = [a for w in gate_args for a in (expansion if w == "${thresholds[@]}" else [w])]
        parsed, _ = _gate_options(args)
        assert [os.path.normpath(r) for r in parsed.runs] == [_storage(main), os.path.normpath(head.benchmark_json)]
        assert parsed.thresholds == (thresholds[1] if expansion else None)
    # suspects re-run in pairs on a checkout of the base; verdicts to the step summary and to the uploaded JSON
    assert parsed.confirm_baseline == "$RUNNER_TEMP/base"
    checkout = _commands(steps["Check out the pull request's base for the confirmation re-runs"]["run"])
    assert ["git", "worktree", "add", "--detach", "$RUNNER_TEMP/base", "$BASE_SHA"] in checkout
    assert parsed.summary == "$GITHUB_STEP_SUMMARY"
    assert steps["Upload the gate's verdicts"]["with"]["path"] == parsed.json


def test_gpu_workflow_calibration_reads_the_runs_it_wrote():
    steps = _steps("calibrate")
    (run,) = _step_runs(steps["Unchanged runs"], "pytest")
    written = str(_pytest_options(run).benchmark_json)
    (calibrate,) = _step_runs(steps["Calibrate"], "nn_speedups.gate")
    parsed, _ = _gate_options(calibrate)
    assert parsed.calibrate and len(parsed.runs) == 1
    assert fnmatch.fnmatch(written.replace("$i", "3"), parsed.runs[0])
    assert steps["Upload the thresholds (commit them as .github/gate-thresholds.json)"]["with"]["path"] == parsed.out


def test_gpu_workflow_installs_tensorrt_keeps_caches_and_can_run_the_smoke_profile():
    extras = importlib.metadata.metadata("nn-speedups").get_all("Provides-Extra")  # pyproject's, as installed
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "gpu-bench.yml").read_text())
    for job in ("bench", "calibrate"):  # trt-* and ort-cuda rows need TensorRT and onnxruntime-gpu on the runner
        steps = _steps(job)
        (setup,) = _commands(steps["Set up (with TensorRT)"]["run"])
        assert setup[:2] == ["make", "setup"]
        wanted = dict(v.split("=", 1) for v in setup[2:])["EXTRAS"].split(",")
        assert {"ort-gpu", "trt"} <= set(wanted) <= set(extras), wanted
        cache = next(s for name, s in steps.items() if name.startswith("Restore Inductor's cache"))
        paths = cache["with"]["path"].split()
        inductor = workflow["env"]["TORCHINDUCTOR_CACHE_DIR"].replace("${{ github.workspace }}/", "")
        assert inductor in paths and "artifacts" in paths
    (smoke,) = _commands(_steps("bench")["Smoke (every GPU-only path once)"]["run"])
    assert smoke[:2] == ["make", "gpu-smoke"] and smoke[2:] == setup[2:]

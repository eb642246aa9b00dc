"""The regression gate (harness.gate): its decisions on small saved runs of this suite's real benches
(tests/fixtures/gate: how each was made is in the README there), its statistics, its answers to bad input, and end
to end: a fixed-work variant through the plugin, run by pytest, gated by harness.gate and by the stock option.

Nothing here asserts a timing: the fixtures' times are data, and the end-to-end variant sleeps a fixed time.
"""

import json
import math
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import gate, timing
from harness.gate import runs as gate_runs
from harness.gate import stats as gs
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "gate"
AA = [FIXTURES / f"aa-{i}.json" for i in (1, 2, 3, 4)]
CHANNELS_LAST = "benches/test_inference.py::test_inference[resnet18-bs1-channels-last-fp32]"
COMPILE = "benches/test_inference.py::test_inference[resnet18-bs1-compile-fp32]"
INT8 = "benches/test_onnxruntime.py::test_onnxruntime[resnet18-bs1-ort-int8-percentile-int8]"


def run_gate(tmp_path, capsys, *args):
    """python -m harness.gate ARGS, in process; (exit code, stdout, stderr, the verdicts' JSON or None)."""
    out = tmp_path / "gate.json"
    code = gate.main([*map(str, args), "--json", str(out), "--markdown", str(tmp_path / "gate.md")])
    captured = capsys.readouterr()
    verdicts = json.loads(out.read_text()) if out.exists() else None
    return code, captured.out, captured.err, verdicts


def by_case(verdicts: dict) -> dict:
    return {c["case"]: c for c in verdicts["cases"]}


@pytest.fixture
def thresholds(tmp_path, capsys):
    """Thresholds calibrated on the four unchanged runs."""
    path = tmp_path / "thresholds.json"
    assert gate.main(["--calibrate", *map(str, AA), "--out", str(path)]) == 0
    capsys.readouterr()
    return path


# ------------------------------------------------------------------------------------------------ real fixtures


def test_calibration_reports_each_case_noise_and_what_it_can_detect(thresholds):
    data = json.loads(thresholds.read_text())
    assert data["run_count"] == 4 and set(data["cases"]) >= {CHANNELS_LAST, COMPILE, INT8}
    for case in data["cases"].values():
        assert case["runs"] == 4 and case["noise"] >= case["between_run_sd"] > 0
        # the smallest detectable slowdown lies above the threshold, and --confirm's threshold below the single run's
        assert case["detectable"] > case["threshold"] >= case["confirm_threshold"] >= 0.10
    assert "cpu/inference" in data["families"]


def test_unchanged_runs_pass_with_calibrated_thresholds(tmp_path, capsys, thresholds):
    for base, head in ((AA[0], AA[1]), (AA[2], AA[3]), (AA[3], AA[0])):
        code, out, err, verdicts = run_gate(tmp_path, capsys, base, head, "--thresholds", thresholds)
        assert code == 0, out + err
        assert verdicts["result"] == "pass" and verdicts["counts"]["slower"] == 0
        assert "PASS" in out and "Traceback" not in err


def test_an_injected_slowdown_of_one_variant_is_slower_and_nothing_else_fails(tmp_path, capsys):
    """slow.json ran right after aa-2.json with the channels-last case's rounds made twice as long."""
    code, out, err, verdicts = run_gate(tmp_path, capsys, AA[1], FIXTURES / "slow.json")
    assert code == 1, out + err
    cases = by_case(verdicts)
    slowed = cases[CHANNELS_LAST]
    assert slowed["verdict"] == "slower" and slowed["change"] > 0.5 and slowed["p"] < gate.ALPHA, slowed
    assert slowed["ci"][0] < slowed["change"] < slowed["ci"][1] and "rounds only" in slowed["ci_kind"]
    assert [c for c, v in cases.items() if v["verdict"] in gate.FAILING] == [CHANNELS_LAST]
    assert "SLOWER     test_inference[resnet18-bs1-channels-last-fp32]" in out


def test_calibrated_on_a_loaded_machine_the_gate_says_where_it_is_blind(tmp_path, capsys, thresholds):
    """The A/A fixtures were made under other jobs' load: channels-last moved by about 50% between unchanged runs,
    so its calibrated threshold is far above 2x and the gate reports the case as noisy rather than unchanged."""
    code, out, err, verdicts = run_gate(tmp_path, capsys, AA[1], FIXTURES / "slow.json", "--thresholds", thresholds)
    slowed = by_case(verdicts)[CHANNELS_LAST]
    assert code == 0 and slowed["verdict"] == "noisy" and "cannot see slowdowns below" in slowed["why"], slowed
    assert slowed["threshold"] > gate.BLIND and "rounds and between-run noise" in slowed["ci_kind"]


def test_a_new_graph_break_is_a_regression_even_where_the_check_allows_it(tmp_path, capsys):
    code, out, err, verdicts = run_gate(tmp_path, capsys, AA[2], FIXTURES / "graph-break.json")
    assert code == 1
    compiled = by_case(verdicts)[COMPILE]
    assert compiled["verdict"] == "regressed" and "graph breaks 0 -> 1" in compiled["why"]
    assert "REGRESSED" in out


def test_a_case_that_now_fails_is_failed_with_its_message(tmp_path, capsys):
    code, out, err, verdicts = run_gate(tmp_path, capsys, AA[3], FIXTURES / "graph-break-fails.json")
    assert code == 1
    compiled = by_case(verdicts)[COMPILE]
    assert compiled["verdict"] == "failed"
    assert "passed in the baseline" in compiled["why"] and "graph break" in compiled["why"]


def test_an_accuracy_drop_is_a_regression(tmp_path, capsys):
    code, out, err, verdicts = run_gate(tmp_path, capsys, AA[1], FIXTURES / "accuracy-drop.json")
    assert code == 1
    int8 = by_case(verdicts)[INT8]
    assert int8["verdict"] == "regressed" and "top1_agreement" in int8["why"], int8


def test_runs_saved_without_round_data_fall_back_to_medians_marked_as_such(tmp_path, capsys):
    paths = []
    for source in (AA[0], FIXTURES / "graph-break.json"):
        run = json.loads(source.read_text())
        for bench in run["benchmarks"]:
            del bench["stats"]["data"]  # what --benchmark-autosave writes without --benchmark-save-data
        paths.append(tmp_path / source.name)
        paths[-1].write_text(json.dumps(run))
    code, out, err, verdicts = run_gate(tmp_path, capsys, *paths)
    assert code == 1  # the graph break needs no rounds
    assert "--benchmark-save-data" in out
    assert all(c["medians_only"] for c in verdicts["cases"] if c["change"] is not None)
    assert "medians only" in by_case(verdicts)[CHANNELS_LAST]["why"]


def test_summary_appends_markdown_and_json_holds_every_verdict(tmp_path, capsys):
    summary = tmp_path / "step-summary.md"
    summary.write_text("earlier step\n")
    for _ in range(2):
        code, _, _, verdicts = run_gate(tmp_path, capsys, AA[2], FIXTURES / "graph-break.json", "--summary", summary)
    text = summary.read_text()
    assert text.startswith("earlier step\n") and text.count("### Regression gate: FAIL") == 2
    assert "| regressed | `test_inference[resnet18-bs1-compile-fp32]` |" in text
    assert len(verdicts["cases"]) == 5 and verdicts["result"] == "fail" and verdicts["counts"]["regressed"] == 1


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json at all", "not JSON"),
        ('{"hello": 1}', "not a pytest-benchmark run"),
        ('{"benchmarks": [{"name": "x", "stats": {"median": "fast"}}], "machine_info": {}}', "not a time"),
        ('{"benchmarks": [], "machine_info": {}}', "no benchmarks in it"),
    ],
)
def test_a_file_that_is_not_a_run_is_a_one_line_error(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    code, out, err, _ = run_gate(tmp_path, capsys, AA[0], bad)
    assert code == 2 and message in err and "Traceback" not in err
    assert err.count("\n") == 1 and "bad.json" in err


def test_missing_files_and_empty_folders_say_how_to_save_runs(tmp_path, capsys):
    code, _, err, _ = run_gate(tmp_path, capsys, AA[0], tmp_path / "nope.json")
    assert code == 2 and "no such file" in err and "--benchmark-save-data" in err
    code, _, err, _ = run_gate(tmp_path, capsys, tmp_path, AA[0])
    assert code == 2 and "no saved runs" in err


def test_a_storage_folder_stands_for_its_newest_run(tmp_path, capsys):
    storage = tmp_path / ".benchmarks" / "Linux-CPython-3.11-64bit"
    storage.mkdir(parents=True)
    (storage / "0001_old.json").write_text(AA[1].read_text())
    (storage / "0002_new.json").write_text((FIXTURES / "graph-break.json").read_text())
    code, _, _, verdicts = run_gate(tmp_path, capsys, AA[2], tmp_path / ".benchmarks")
    assert verdicts["head"].endswith("0002_new.json") and code == 1


@pytest.mark.parametrize("key, value", [("cpu_model", "Intel Xeon"), ("nn_speedups", {"profile": "full"})])
def test_runs_of_another_machine_or_profile_are_refused_unless_allowed(tmp_path, capsys, key, value):
    other = json.loads(AA[1].read_text())
    if key == "nn_speedups":
        other["machine_info"]["nn_speedups"] = {**other["machine_info"]["nn_speedups"], **value}
    else:
        other["machine_info"][key] = value
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    code, _, err, _ = run_gate(tmp_path, capsys, AA[0], path)
    assert code == 2 and "different machines or set-ups" in err and "--allow-machine-change" in err
    code, out, _, _ = run_gate(tmp_path, capsys, AA[0], path, "--allow-machine-change")
    assert code in (0, 1) and "compared anyway" in out


def test_a_bad_thresholds_file_is_a_one_line_error(tmp_path, capsys):
    code, _, err, _ = run_gate(tmp_path, capsys, AA[0], AA[1], "--thresholds", AA[2])
    assert code == 2 and "not a thresholds file" in err


# ------------------------------------------------------------------------------------------------ statistics


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(1e-4, 1.0), min_size=5, max_size=60),
    st.floats(0.5, 3.0),
)
def test_hodges_lehmann_recovers_a_multiplicative_shift_inside_its_interval(times, factor):
    s = gs.shift(times, [t * factor for t in times])
    assert s.effect == pytest.approx(math.log(factor), abs=1e-9)
    assert s.low <= s.effect <= s.high


def _run(case_times: dict, **info) -> gate_runs.Run:
    cases = {
        name: gate_runs.CaseRun(
            name,
            name,
            {"family": "inference", "device": "cpu", **info},
            times,
            sorted(times)[len(times) // 2],
            0.0,
            len(times),
        )  # fmt: skip
        for name, times in case_times.items()
    }
    return gate_runs.Run("mem.json", {}, cases)


def test_too_few_rounds_to_reach_significance_are_noisy_not_slower():
    base = _run({"a": [1.0, 1.3, 0.8, 1.2, 0.9]})
    head = _run({"a": [1.5, 1.1, 1.7, 1.25, 1.6]})  # +33% median, rounds overlap
    (v,) = gate.compare(base, head, gate.Options())
    assert v.verdict == "noisy" and "not significant" in v.why


def test_a_shift_inside_the_threshold_is_unchanged_and_beyond_it_slower():
    times = [1.0 + 0.001 * i for i in range(50)]
    base = _run({"a": times, "b": times})
    head = _run({"a": [t * 1.05 for t in times], "b": [t * 1.2 for t in times]})
    verdicts = {v.case: v for v in gate.compare(base, head, gate.Options())}
    assert verdicts["a"].verdict == "unchanged" and verdicts["b"].verdict == "slower"
    assert verdicts["b"].change == pytest.approx(0.2)


def test_non_timing_regressions_carry_their_numbers():
    base = _run({"a": [1.0] * 5}, info_provider="CUDAExecutionProvider", model_size_mb=10.0, peak_host_mb=1000.0)
    head = _run({"a": [1.0] * 5}, info_provider="CPUExecutionProvider", model_size_mb=12.0, peak_host_mb=1200.0)
    (v,) = gate.compare(base, head, gate.Options())
    assert v.verdict == "regressed"
    assert "provider CUDAExecutionProvider -> CPUExecutionProvider" in v.why
    assert "model_size_mb 10.0 -> 12.0" in v.why and "peak_host_mb 1000 -> 1200" in v.why


def test_thresholds_shrink_with_confirmation_reruns_and_never_go_below_the_minimum_effect():
    single = gs.threshold(0.10, 0.05, 3.5)
    confirm = gs.threshold(0.10, 0.05, 3.5, "confirm", 3)
    both = gs.threshold(0.10, 0.05, 3.5, "confirm-baseline", 3)
    assert single > confirm > both >= math.log1p(0.10)
    assert gs.threshold(0.10, 0.0001, 3.5) == pytest.approx(math.log1p(0.10))
    assert gs.threshold(0.10, None, 3.5) == pytest.approx(math.log1p(0.10))
    s, ucb = gs.run_noise([0.0, 0.1, -0.1])
    assert ucb > s > 0


def test_confirmation_against_the_saved_baseline_keeps_the_baseline_noise():
    """A baseline that happened to be fast makes every re-run look slower: with calibrated noise the confirmed
    threshold still holds the baseline's share, so agreeing re-runs alone do not fail the gate."""
    times = [1.0 + 0.001 * i for i in range(30)]
    base = _run({"a": times})
    head = _run({"a": [t * 1.20 for t in times]})
    reruns = [_run({"a": [t * f for t in times]}) for f in (1.105, 1.13, 1.11)]
    calibrated = gate.Thresholds({"cases": {"a": {"noise": 0.04}}, "families": {}})
    options = gate.Options(confirm=True)
    (v,) = gate.compare(base, head, options, calibrated)
    assert gate.suspects([v], base, head, options, calibrated) == [v]
    gate.confirm_case(v, base.cases["a"], reruns, None, options, calibrated)
    assert v.verdict == "unchanged" and "not confirmed" in v.why  # 3.5 x 0.04 x sqrt(4/3): 17.5% > +11%
    (v,) = gate.compare(base, head, options)  # uncalibrated: the minimum effect, 10%
    gate.confirm_case(v, base.cases["a"], reruns, None, options, None)
    assert v.verdict == "slower" and v.confirm["agree"] == 3


def test_a_rerun_that_fails_fails_the_case_unless_it_is_the_baseline_checkouts():
    times = [1.0 + 0.001 * i for i in range(30)]
    base, head = _run({"a": times}), _run({"a": [t * 1.5 for t in times]})
    broken = gate_runs.Run("rerun.json", {}, {}, failed={"a": "RuntimeError: boom"})
    options = gate.Options(confirm=True, repeats=1)
    (v,) = gate.compare(base, head, options)
    gate.confirm_case(v, base.cases["a"], [broken], None, options, None)
    assert v.verdict == "failed" and "boom" in v.why
    (v,) = gate.compare(base, head, gate.Options(confirm=True, repeats=1, rerun_baseline=True))
    gate.confirm_case(v, base.cases["a"], [head], [broken], options, None)
    assert v.verdict == "noisy" and "baseline checkout's re-run failed" in v.why


def test_confirm_all_re_runs_a_slowdown_one_drifting_run_hid_and_keeps_real_speed_ups():
    times = [1.0 + 0.001 * i for i in range(30)]
    base = _run({"hidden": times, "sped-up": times})
    # the head run happened while the machine was 30% faster: the 25% slowdown looks like a speed-up
    head = _run({"hidden": [t * 1.25 * 0.7 for t in times], "sped-up": [t * 0.5 * 0.7 for t in times]})
    assert gate.suspects(gate.compare(base, head, gate.Options(confirm=True)), base, head, gate.Options(), None) == []
    options = gate.Options(confirm=True, repeats=3, rerun_baseline=True, confirm_all=True)
    verdicts = {v.case: v for v in gate.compare(base, head, options)}
    assert sorted(v.case for v in gate.suspects(list(verdicts.values()), base, head, options, None)) == [
        "hidden",
        "sped-up",
    ]
    drift = (1.0, 0.8, 1.2)  # each head re-run beside a baseline re-run on the same machine state
    heads = [_run({"hidden": [t * 1.25 * d for t in times], "sped-up": [t * 0.5 * d for t in times]}) for d in drift]
    bases = [_run({"hidden": [t * d for t in times], "sped-up": [t * d for t in times]}) for d in drift]
    for name, v in verdicts.items():
        gate.confirm_case(v, base.cases[name], heads, bases, options, None)
    assert verdicts["hidden"].verdict == "slower" and verdicts["hidden"].confirm["median"] == pytest.approx(0.25)
    assert verdicts["sped-up"].verdict == "faster"


def test_injected_slowdown_matches_node_ids_and_rejects_bad_specs(monkeypatch):
    assert gate_runs.INJECT_ENV == timing.INJECT_SLOWDOWN_ENV
    monkeypatch.setenv(timing.INJECT_SLOWDOWN_ENV, "-channels-last-fp32]:1.25,eager:2")
    assert timing.injected_slowdown("t.py::test[resnet18-bs1-channels-last-fp32]") == 1.25
    assert timing.injected_slowdown("t.py::test[resnet18-bs1-eager-fp32]") == 2.0
    assert timing.injected_slowdown("t.py::test[resnet18-bs1-compile-fp32]") == 1.0
    monkeypatch.setenv(timing.INJECT_SLOWDOWN_ENV, "eager")
    with pytest.raises(ValueError, match="SUBSTRING:FACTOR"):
        timing.injected_slowdown("x")


def test_an_injected_round_really_takes_factor_times_its_own_time(monkeypatch):
    monkeypatch.setenv(timing.INJECT_SLOWDOWN_ENV, "slow-case:1.5")
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "t.py::test[slow-case] (call)")
    spent = []

    def work():
        start = timing.time.perf_counter()
        sum(range(20000))
        spent.append(timing.time.perf_counter() - start)

    timer = timing.RoundTimer(work, lambda: None)
    for _ in range(3):
        timer()
    assert all(t >= 1.5 * s for t, s in zip(timer.times, spent))


# ------------------------------------------------------------------------------------------------ end to end

BENCH = textwrap.dedent(
    """
    import os
    import time

    from harness.matrix import matrix
    from harness.variant import Variant
    from optimizations.base import Runner


    def steady(model, inputs, ctx):
        delay = 0.05 * float(os.environ.get("SLOWDOWN", "1"))  # 10% of it is 5 ms: far above sleep's jitter
        out = model(*inputs)

        def run(x):
            # fixed work that a busy machine cannot stretch, so the only change between runs is the slow-down
            time.sleep(delay)
            return out

        return Runner(fn=run, model=model)


    @matrix([Variant("steady", steady, check="exact")], models=["resnet18"])
    def test_gate(case, measure):
        measure(case)
    """
)
STEADY = "test_gate_bench.py::test_gate[resnet18-bs1-steady-fp32]"


def _pytest(pytester, monkeypatch, slowdown: str, *args: str):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("SLOWDOWN", slowdown)
    storage = f"file://{pytester.path / 'bench-storage'}"
    return pytester.runpytest_subprocess(
        "-p", "harness.plugin", "--models", "resnet18", "--batch-sizes", "1", "--image-size", "32",
        "--weights", "random", f"--benchmark-storage={storage}", "--report-dir", str(pytester.path / "reports"), *args,
    )  # fmt: skip


def test_gate_end_to_end_on_a_fixed_work_variant(pytester, monkeypatch, capsys):
    """pytest saves a baseline; an unchanged run passes harness.gate; a run slowed 2x fails it and fails the stock
    --benchmark-compare-fail with a readable summary, not a traceback; --confirm re-runs the suspect in fresh
    processes: when they are not slow (the slowdown was one run's), the gate passes; when they are slower than
    re-runs of the baseline's code (--confirm-baseline), it fails."""
    pytester.makepyfile(test_gate_bench=BENCH)
    first = _pytest(pytester, monkeypatch, "1", "--benchmark-autosave", "--benchmark-save-data")
    assert first.ret == 0, first.stdout.str()[-3000:] + first.stderr.str()[-3000:]
    storage = pytester.path / "bench-storage"
    tmp = pytester.path

    unchanged = _pytest(pytester, monkeypatch, "1", f"--benchmark-json={tmp / 'same.json'}")
    assert unchanged.ret == 0
    code, out, err, verdicts = run_gate(tmp, capsys, storage, tmp / "same.json")
    assert code == 0, out + err
    assert by_case(verdicts)[STEADY]["verdict"] in ("unchanged", "noisy")

    slowed = _pytest(pytester, monkeypatch, "2", "--benchmark-compare", "--benchmark-compare-fail=median:10%",
                     f"--benchmark-json={tmp / 'slow.json'}")  # fmt: skip
    assert slowed.ret == 1
    output = slowed.stdout.str() + slowed.stderr.str()
    assert "performance has regressed (--benchmark-compare-fail)" in output
    assert "Field 'median' has failed PercentageRegressionCheck" in output
    assert "Traceback" not in output and "PerformanceRegression" not in output
    saved = json.loads((tmp / "slow.json").read_text())["nn_speedups"]
    assert "-p" in saved["rerun_args"] and "harness.plugin" in saved["rerun_args"]

    code, out, err, verdicts = run_gate(tmp, capsys, storage, tmp / "slow.json")
    assert code == 1 and by_case(verdicts)[STEADY]["verdict"] == "slower"
    assert by_case(verdicts)[STEADY]["change"] == pytest.approx(1.0, abs=0.2)  # 2x the sleep

    monkeypatch.setenv("SLOWDOWN", "1")  # the re-runs are not slow: one run's slowdown must not fail the gate
    code, out, err, verdicts = run_gate(tmp, capsys, storage, tmp / "slow.json", "--confirm", "--confirm-runs", "2")
    steady = by_case(verdicts)[STEADY]
    assert code == 0 and steady["verdict"] == "unchanged" and "not confirmed" in steady["why"], out + err
    assert steady["confirm"]["reruns"] == 2 and "fresh process" in err

    # they are, against re-runs of the baseline's code (a checkout whose variant ignores SLOWDOWN): confirmed
    monkeypatch.setenv("SLOWDOWN", "2")
    base_checkout = tmp / "base-checkout"
    base_checkout.mkdir()
    (base_checkout / "test_gate_bench.py").write_text(BENCH.replace('float(os.environ.get("SLOWDOWN", "1"))', "1.0"))
    code, out, err, verdicts = run_gate(
        tmp, capsys, storage, tmp / "slow.json", "--confirm-baseline", base_checkout, "--confirm-runs", "1"
    )
    steady = by_case(verdicts)[STEADY]
    assert code == 1 and steady["verdict"] == "slower" and steady["why"].startswith("confirmed"), out + err
    assert steady["confirm"]["against"] == "1 baseline re-runs" and steady["change"] == pytest.approx(1.0, abs=0.2)


def test_the_fixtures_are_runs_of_this_suite_with_rounds_and_outcomes():
    for path in [*AA, FIXTURES / "slow.json", FIXTURES / "graph-break-fails.json"]:
        run = gate_runs.load_run(path)
        assert run.has_data and run.meta is not None and "--variants" in run.meta["rerun_args"]
    failing = gate_runs.load_run(FIXTURES / "graph-break-fails.json")
    assert COMPILE in failing.failed and COMPILE not in failing.cases

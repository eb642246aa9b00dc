"""Anomaly flags: the report marks rows to look at twice, in its tables, its "Look twice" section and the CSV.

Rows are built the way a bench builds them (timing_fields of measure.timing.summarize over given rounds), so the
flags are judged on the same figures a real run records; no timing here.
"""

import csv

from nn_speedups import report
from nn_speedups.measure import timing
from nn_speedups.measure.cases import timing_fields
from nn_speedups.report import anomalies
from nn_speedups.report.cells import percentile_cell


def _bench(variant: str, batch: int, rounds_ms: list[float], eager_ms: float, dtype: str = "fp32") -> dict:
    fields = timing_fields(timing.summarize([ms / 1e3 for ms in rounds_ms]))
    info = {"family": "inference", "model": "bert-base", "activation": None, "variant": variant, "device": "cpu",
            "dtype": dtype, "batch_size": batch, "profile": "quick", **fields, "samples_per_s": 1.0,
            "eager_median_ms": eager_ms, "speedup_vs_eager": eager_ms / fields["median_ms"], "check": "lowp",
            "cosine": 1.0}  # fmt: skip
    name = f"test_inference[bert-base-bs{batch}-{variant}{'' if variant.endswith(dtype) else '-' + dtype}]"
    return {"name": name, "group": f"inference/bert-base-bs{batch}", "extra_info": info}


def _run(isa=("avx2",)) -> dict:
    steady = lambda ms: [ms * (1 + 0.001 * (i % 3)) for i in range(12)]  # noqa: E731
    return {
        "machine_info": {"cpu_model": "test", "cpu_count": 2, "cpu_isa": list(isa)},
        "benchmarks": [
            _bench("eager", 1, steady(196.0), 196.0),
            _bench("eager", 8, steady(1200.0), 1200.0),
            _bench("amp", 1, steady(1273.0), 196.0, "bf16"),  # 0.15x at batch 1: slower, and longer than batch 8
            _bench("amp", 8, steady(603.0), 1200.0, "bf16"),
            _bench("compile", 1, [100.0 + 2.5 * i for i in range(21)], 196.0),  # drifts: a ramp from 100 to 150 ms
            _bench("compile", 8, [500.0, 800.0] * 10, 1200.0),  # two modes, wide spread
        ],
    }


def _flags(run: dict) -> dict[str, list[str]]:
    return {r["name"]: anomalies.codes(r) for r in report.rows(run)}


def test_each_kind_of_anomaly_is_flagged_on_its_row_and_only_there():
    flags = _flags(_run())
    assert flags["test_inference[bert-base-bs1-amp-bf16]"] == ["slower", "batch"]
    assert flags["test_inference[bert-base-bs1-compile-fp32]"] == ["drift"]
    assert flags["test_inference[bert-base-bs8-compile-fp32]"] == ["modes", "spread"]
    for clean in ("bs1-eager-fp32", "bs8-eager-fp32", "bs8-amp-bf16"):
        assert flags[f"test_inference[bert-base-{clean}]"] == [], clean


def test_the_slow_bf16_row_says_why_where_the_cpu_lacks_native_bf16():
    def slower_text(isa):
        row = next(r for r in report.rows(_run(isa)) if r["name"] == "test_inference[bert-base-bs1-amp-bf16]")
        return next(f for f in row["flags"] if f.startswith("slower:"))

    assert "6.5x slower than eager" in slower_text(("avx2",))
    assert "no native bf16" in slower_text(("avx2",))
    assert "no native bf16" not in slower_text(("avx2", "avx512_bf16")), "a CPU with AVX512-BF16 has it"


def test_flags_reach_the_tables_the_look_twice_section_and_the_csv(tmp_path):
    run = _run()
    text = report.render_tables(run)
    assert "BS 1: slower, batch" in text
    section = text[text.index("### Look twice (3 flagged rows)") :]
    assert "| inference | bert-base | amp-bf16 | 1 | much slower than eager |" in section
    assert "| inference | bert-base | compile-fp32 | 8 | two modes | 50% of the rounds are 1.60x slower" in section
    paths = report.write_report(run, tmp_path / "r")
    with open(next(p for p in paths if p.suffix == ".csv")) as f:
        by_name = {r["name"]: r for r in csv.DictReader(f)}
    assert by_name["test_inference[bert-base-bs1-compile-fp32]"]["flags"].startswith("drift: the second half")
    assert by_name["test_inference[bert-base-bs1-eager-fp32]"]["flags"] == ""


def test_a_run_with_nothing_odd_has_no_look_twice_section():
    run = _run()
    run["benchmarks"] = run["benchmarks"][:2]
    assert "Look twice" not in report.render_tables(run)


def test_a_percentile_from_too_few_rounds_prints_the_count():
    row = {"rounds": 12, "p90_ms": 3.0, "p99_ms": 4.0}  # a run saved before the 64/662 rule: its p90 is not shown
    assert percentile_cell(row, "p90_ms") == "n=12"
    assert percentile_cell({"rounds": 100, "p90_ms": 3.0}, "p90_ms") == "3.00"
    assert percentile_cell({"rounds": 100, "p99_ms": 4.0}, "p99_ms") == "n=100"


def test_an_eager_model_that_is_not_repeatable_is_flagged_on_its_eager_row():
    run = _run()
    for bench in run["benchmarks"]:
        bench["extra_info"].update(eager_deterministic=False, eager_repeat_max_abs=2e-7)
    flags = _flags(run)
    assert flags["test_inference[bert-base-bs8-eager-fp32]"] == ["repeat"]
    assert "repeat" not in flags["test_inference[bert-base-bs8-amp-bf16]"]  # said once, on eager's row


def test_cold_start_adds_the_process_start_the_model_load_and_the_first_result():
    run = _run()
    run["machine_info"]["record"] = {"process_start_s": 4.0}
    for bench in run["benchmarks"]:
        bench["extra_info"].update(model_load_s=0.5, compile_s=2.0 if bench["name"].endswith("compile-fp32]") else 0.1)
    cold = {r["name"]: r["cold_start_s"] for r in report.rows(run)}
    assert cold["test_inference[bert-base-bs1-compile-fp32]"] == 6.5
    assert cold["test_inference[bert-base-bs1-eager-fp32]"] == 4.6
    del run["machine_info"]["record"]  # a run saved before the record: no start-up known, no cold start claimed
    assert all("cold_start_s" not in r for r in report.rows(run))


def test_a_run_that_capped_onednn_below_bf16_is_explained_like_a_cpu_without_it():
    run = _run(("avx2", "avx512_bf16"))
    run["machine_info"]["record"] = {"env": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}
    row = next(r for r in report.rows(run) if r["name"] == "test_inference[bert-base-bs1-amp-bf16]")
    assert "no native bf16" in row["flags"][0] and "capped" in row["flags"][0]

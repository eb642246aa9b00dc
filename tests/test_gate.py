"""The regression gate of the README: autosave, then --benchmark-compare --benchmark-compare-fail=median:10%.

A bench of the suite's own kind (a Variant through the plugin's `measure`) whose runner does a fixed amount of
waiting: the unchanged run passes the gate, the deliberately slowed one fails it.
"""

import textwrap

from tests.conftest import ROOT

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


def _run(pytester, monkeypatch, slowdown: str, *args: str):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("SLOWDOWN", slowdown)
    storage = f"file://{pytester.path / 'bench-storage'}"
    return pytester.runpytest_subprocess(
        "-p", "harness.plugin", "--models", "resnet18", "--batch-sizes", "1", "--image-size", "32",
        "--weights", "random", f"--benchmark-storage={storage}", "--report-dir", str(pytester.path / "reports"), *args,
    )  # fmt: skip


def test_gate_passes_unchanged_and_fails_a_slowed_variant(pytester, monkeypatch):
    pytester.makepyfile(test_gate_bench=BENCH)
    first = _run(pytester, monkeypatch, "1", "--benchmark-autosave")
    assert first.ret == 0, first.stdout.str()[-3000:] + first.stderr.str()[-3000:]
    first.assert_outcomes(passed=1)

    unchanged = _run(pytester, monkeypatch, "1", "--benchmark-compare", "--benchmark-compare-fail=median:10%")
    assert unchanged.ret == 0, unchanged.stdout.str()[-3000:] + unchanged.stderr.str()[-3000:]
    unchanged.assert_outcomes(passed=1)

    slowed = _run(pytester, monkeypatch, "2", "--benchmark-compare", "--benchmark-compare-fail=median:10%")
    assert slowed.ret != 0
    output = slowed.stdout.str() + slowed.stderr.str()
    assert "Performance has regressed" in output
    assert "Field 'median' has failed PercentageRegressionCheck" in output

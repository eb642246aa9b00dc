"""Where the time goes: a profiling pass after a case's timed rounds, never inside them.

With `--traces all` (or `--traces SUBSTRING` of a test id; not `--trace`, pytest's own pdb switch), each selected
case, once timed, runs a few more steps of the same runner (nothing is rebuilt or recompiled) under torch.profiler
(CPU activities, and CUDA on a GPU; shapes; Python stacks) and writes under `reports/<run>/`:

- `traces/<case>.json.gz`: the Chrome trace (open it in https://ui.perfetto.dev);
- `tb/<case>/`: the same trace as a TensorBoard profiler run (`tensorboard --logdir reports/<run>/tb`, with the
  torch-tb-profiler plugin);
- `traces/<case>.png`: a flame chart of one step;
- for ONNX Runtime rows `traces/<case>.ort.json.gz` (ORT's own session profile) and for TensorRT rows
  `traces/<case>.trt.json.gz` (IProfiler layer times, laid end to end).

and adds to the case's extra_info: the op breakdown (`top_ops`, `op_ms_per_step`, `matmul_share`,
`elementwise_share`, `memcpy_share`, `fused_share`, `other_share`, `op_share_of_step`), `kernels_per_step` with
`kernels_counted` (what was counted), for compiled variants `graph_count`, `graph_calls_per_step` and
`generated_kernels`, and the roofline position of model-level rows (nn_speedups/trace/roofline.py). A profiler that
fails leaves the case's timing as it was and records `trace_error`.

The pass is kept short: as many steps as fit in TRACE_BUDGET_S at the case's median (1 to MAX_STEPS), after one
warm-up step unless a step is slow. Step times in a trace carry the profiler's overhead (the Python tracer most of
all): read a trace's times as shares, and latency from the timed rounds.

    python -m nn_speedups.trace show RUN.json                  # the breakdown tables of a saved run
    python -m nn_speedups.trace summarize TRACE.json.gz        # top operators and kernel counts of a trace file
    python -m nn_speedups.trace flame TRACE.json.gz --out step.png
"""

from __future__ import annotations

import gc
import gzip
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nn_speedups.core.errors import one_line
from nn_speedups.trace.breakdown import op_breakdown

TRACE_BUDGET_S = 0.3  # profiled steps per case: as many as fit in this at the case's median latency...
MAX_STEPS = 3  # ...at most this many...
SLOW_STEP_MS = 100.0  # ...and no warm-up step when a step takes longer than this (the runner is warm already)
KERNEL_NAMES_KEPT = 20
ERROR_CHARS = 400  # trace_error / trace_flame_error: one line, cut here (nn_speedups.core.errors.one_line)


class TraceSetupError(ValueError):
    """--traces cannot work as asked (e.g. the trace folder is not writable)."""


def slug(name: str) -> str:
    """A file name for a test node id: `benches/test_x.py::test_y[case]` -> `test_x.test_y.case`."""
    name = name.rsplit("/", 1)[-1].replace(".py::", ".").replace("::", ".")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("[", ".")).strip("-.")


def plan_steps(median_ms: float, cuda: bool) -> tuple[int, int]:
    """(profiled steps, warm-up steps) for a case whose timed median is `median_ms`."""
    steps = max(1, min(MAX_STEPS, int(TRACE_BUDGET_S * 1e3 / max(median_ms, 1e-3))))
    warmup = 1 if cuda or median_ms < SLOW_STEP_MS else 0
    return steps, warmup


@dataclass(frozen=True)
class Tracer:
    root: Path  # reports/<run>
    selection: str  # "all", or a substring of the test node ids to trace

    @classmethod
    def create(cls, report_dir: str | Path, run_name: str, selection: str) -> Tracer:
        """Make reports/<run>/traces and reports/<run>/tb, and prove they are writable, before anything runs."""
        if not selection.strip():
            raise TraceSetupError("--traces needs 'all' or a substring of a case id, e.g. --traces resnet18-bs1")
        tracer = cls(Path(report_dir).resolve() / run_name, selection.strip())
        try:
            for folder in (tracer.traces_dir, tracer.tb_dir):
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=folder):
                    pass
        except OSError as error:
            raise TraceSetupError(
                f"--traces: cannot write traces under {tracer.root} ({error.strerror or error}); "
                "give --report-dir a writable folder"
            ) from None
        return tracer

    @property
    def traces_dir(self) -> Path:
        return self.root / "traces"

    @property
    def tb_dir(self) -> Path:
        return self.root / "tb"

    def remove_if_empty(self) -> None:
        """Take back the folders made up front when nothing was traced (e.g. --collect-only)."""
        for folder in (self.traces_dir, self.tb_dir, self.root):
            try:
                folder.rmdir()  # only ever removes an empty folder
            except OSError:
                pass

    def wants(self, nodeid: str) -> bool:
        return self.selection == "all" or self.selection in nodeid

    def trace(
        self,
        name: str,
        step: Callable[[], object],
        sync: Callable[[], None],
        device: str,
        record: dict,
        runner=None,
        inputs: tuple = (),
    ) -> dict:
        """Profile a few calls of `step` (the case's own runner, already timed) and return the fields to add to the
        case's record; never raises for a profiler failure (the fields then hold `trace_error`)."""
        start = time.perf_counter()
        try:
            fields = self._trace(name, step, sync, device, record, runner, inputs)
        except Exception as error:  # noqa: BLE001 - whatever the profiler raises, the timing already taken stands
            fields = {"trace_error": one_line(error, limit=ERROR_CHARS)}
        gc.collect()
        fields["trace_s"] = time.perf_counter() - start
        return fields

    def _trace(self, name, step, sync, device, record, runner, inputs) -> dict:
        import torch

        from nn_speedups.trace import flame, torch_trace

        cuda = torch.device(device).type == "cuda"
        steps, warmup = plan_steps(record.get("median_ms") or 1.0, cuda)
        base = slug(name)
        tb_run = self.tb_dir / base
        prof, written = torch_trace.record_steps(step, sync, steps, warmup, cuda, tb_run, base)
        trace_file = self.traces_dir / f"{base}.json.gz"
        _link_or_copy(written, trace_file)
        tt = torch_trace.analyze(prof.events(), cuda)
        del prof
        fields: dict = {
            "trace_file": str(trace_file),
            "trace_tb_dir": str(tb_run),
            "trace_steps": tt.steps,
            "traced_step_ms": tt.step_ms,
            "trace_event_counts": tt.event_counts,
        }
        if cuda and not tt.event_counts.get("kernel"):
            fields.update(kernels_per_step=None, kernels_counted=None)
            fields["trace_note"] = "no CUDA kernel events in the trace (CUPTI unavailable to this process?)"
        else:
            fields.update(kernels_per_step=tt.kernels / max(1, tt.steps), kernels_counted=tt.kernels_counted)
            fields["kernel_calls_per_step"] = {
                k: n / max(1, tt.steps) for k, n in tt.kernel_calls.most_common(KERNEL_NAMES_KEPT)
            }
        if tt.generated_modules or record.get("info_graphs") is not None:
            fields.update(
                graph_count=tt.graphs,
                graph_calls_per_step=tt.graph_calls / max(1, tt.steps),
                generated_kernels=tt.generated_kernels,
            )
        engine = None
        if runner is not None and getattr(runner, "engine_profile", None) is not None:
            try:
                engine = runner.engine_profile(inputs, steps, self.traces_dir, base)
            except Exception as error:  # noqa: BLE001 - the engine's profiler failing leaves torch's breakdown
                fields["trace_error"] = "engine profile: " + one_line(error, limit=ERROR_CHARS)
        flame_source = trace_file
        if engine is not None:
            if not cuda:
                fields.pop("kernel_calls_per_step", None)  # the Python calls into the engine, nothing to count
            fields.update(engine_fields(engine, tt.step_ms, cuda))
            engine_file = engine.get("trace_file") or write_timeline(
                engine["ops"], engine["steps"], self.traces_dir / f"{base}.trt.json.gz"
            )
            fields["trace_engine_file"] = str(engine_file)
            flame_source = engine_file
            bytes_per_step, bytes_note = fields.pop("_bytes_per_step"), "the engine's profile gives no tensor shapes"
        else:
            fields.update(op_breakdown(tt.op_times, tt.steps, tt.step_ms))
            fields["breakdown_source"] = tt.breakdown_source
            bytes_per_step, bytes_note = tt.operand_bytes, tt.operand_bytes_note
        png = self.traces_dir / f"{base}.png"
        try:
            flame.draw(flame_source, png, title=name.rsplit("/", 1)[-1])
            fields["trace_flame_png"] = str(png)
        except Exception as error:  # noqa: BLE001 - a chart that cannot be drawn leaves the breakdown standing
            fields["trace_flame_error"] = one_line(error, limit=ERROR_CHARS)
        fields.update(roofline_fields(record, bytes_per_step, bytes_note, device))
        return fields


def engine_fields(engine: dict, torch_step_ms: float | None, cuda: bool) -> dict:
    """The op breakdown from an engine's own profile (ONNX Runtime nodes by op type, TensorRT layers by type)."""
    ops, steps = engine["ops"], max(1, engine["steps"])
    step_ms = engine.get("step_ms") or torch_step_ms
    fields = op_breakdown([(o["op"], o["us"]) for o in ops], steps, step_ms)
    fields["breakdown_source"] = engine["source"]
    fields["engine_kernels_per_step"] = len(ops) / steps
    fields["engine_kernels_counted"] = engine["kernels_counted"]
    if not cuda:  # on a CPU the engine's node kernels are the kernels; on a GPU, CUPTI's kernel events are
        fields["kernels_per_step"] = len(ops) / steps
        fields["kernels_counted"] = engine["kernels_counted"]
    sizes = [o.get("bytes") for o in ops]
    fields["_bytes_per_step"] = sum(sizes) / steps if ops and None not in sizes else None
    return fields


def write_timeline(ops: list[dict], steps: int, path: Path) -> Path:
    """A Chrome trace of engine ops that have durations but no timestamps (TensorRT's IProfiler): each step a
    ProfilerStep#N range with its layers laid end to end, in the order reported."""
    events, t = [], 0.0
    for step in range(steps):
        mine = [o for o in ops if o.get("run") == step]
        begin = t
        for o in mine:
            events.append({"ph": "X", "cat": "trt_layer", "name": o["name"], "ts": t, "dur": o["us"], "pid": 0,
                           "tid": 1, "args": {"layer_type": o["op"]}})  # fmt: skip
            t += o["us"]
        events.append({"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{step}", "ts": begin,
                       "dur": max(t - begin, 1e-3), "pid": 0, "tid": 1})  # fmt: skip
        t += 1.0
    note = "layers laid end to end from TensorRT IProfiler times; the layout is synthesized, the durations measured"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events, "note": note}, f)
    return path


def roofline_fields(record: dict, bytes_per_step: float | None, note: str | None, device: str) -> dict:
    """The roofline position of a model-level row (one with FLOPs per step and a float dtype)."""
    from nn_speedups.trace import roofline

    gflops, median, dtype = record.get("gflops"), record.get("median_ms"), record.get("dtype")
    if not gflops or not median or dtype not in ("fp32", "bf16", "fp16"):
        return {}
    if not bytes_per_step:
        return {"roofline_note": note or "no bytes moved in the trace"}
    return roofline.position(gflops, median, bytes_per_step, roofline.measured_peaks(device, dtype))


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)

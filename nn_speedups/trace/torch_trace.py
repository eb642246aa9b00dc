"""Recording a few steps with torch.profiler, and reading them back through the profiler's own API (`events()`).

What is counted, from the events of the profiled steps (those inside a `ProfilerStep#N` annotation):

- GPU: `kernels_per_step` is the CUDA kernel events (CUPTI) per step; the op breakdown is device time of kernels,
  copies and memsets, by kernel name.
- CPU: a CPU launches no kernels, so `kernels_per_step` counts what stands for a launch there: operator calls
  dispatched from Python, from compiled code or from the autograd engine (an aten op with no operator around it)
  that do work (allocations and views such as aten::empty or aten::view excluded), plus the calls of Inductor's
  generated C++ kernels. Those kernels are C functions called from Inductor's generated
  Python wrapper, so they are visible only through the profiler's Python tracer (`with_stack=True`), as
  `<built-in function kernel>` events under the wrapper's `call`; their names come from the wrapper's source, in call
  order. The op breakdown is CPU self time of operators and of those kernel calls.
- Compiled variants: `graph_count` (distinct Inductor graphs that ran, by the keys of their `## Call CompiledFxGraph`
  ranges; a training step's forward and backward graphs count apart), `graph_calls_per_step` and
  `generated_kernels`, the kernels defined in the generated wrapper modules the trace shows running (distinct
  definitions: Inductor reuses one kernel for identical code, so calls per step can exceed it).
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nn_speedups.trace.breakdown import INDUCTOR_CPP_KERNEL, tensor_bytes

# aten ops that allocate or re-view memory: no kernel runs for them
NON_COMPUTE = frozenset(
    "aten::" + n
    for n in (
        "empty", "empty_strided", "empty_like", "resize_", "as_strided", "as_strided_", "view", "_reshape_alias",
        "reshape", "_unsafe_view", "t", "transpose", "permute", "expand", "squeeze", "unsqueeze", "select", "slice",
        "detach", "detach_", "alias", "_nnpack_available", "lift_fresh", "flatten", "unflatten", "resolve_conj",
        "resolve_neg", "contiguous", "numpy_T", "split", "chunk", "narrow", "unbind", "set_", "is_nonzero",
        "result_type", "view_as", "expand_as", "movedim", "split_with_sizes", "_has_compatible_shallow_copy_type",
    )
)  # fmt: skip
_OP_NAME = re.compile(r"^[A-Za-z_]\w*::[\w.]+$")
_WRAPPER_CALL = re.compile(r"^(?P<path>.+\.py)\((?P<line>\d+)\): call$")
_KERNEL_DEF = re.compile(r"^(\w+) = async_compile\.(\w+)\(", re.MULTILINE)
_CPP_KERNEL_CALL = re.compile(r"^<built-in function (kernel|cpp_fused_\w+)>$")
DEVICE_ACTIVITIES = ("kernel", "gpu_memcpy", "gpu_memset")
GRAPH_CALL = "## Call CompiledFxGraph"


def record_steps(
    step: Callable[[], object], sync: Callable[[], None], steps: int, warmup: int, cuda: bool, tb_dir: Path, worker: str
):
    """Profile `warmup + steps` calls of `step` (each ended by `sync`); the active steps are written by
    torch.profiler.tensorboard_trace_handler into `tb_dir` (a Chrome trace, gzipped). Returns (profiler, file)."""
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    handler = tensorboard_trace_handler(str(tb_dir), worker_name=worker, use_gzip=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*warmup.*")  # warmup=0 for slow steps: the runner is warm
        with profile(
            activities=activities,
            record_shapes=True,
            with_stack=True,
            schedule=schedule(wait=0, warmup=warmup, active=steps, repeat=1),
            on_trace_ready=handler,
        ) as prof:
            for _ in range(warmup + steps):
                step()
                sync()
                prof.step()
    written = sorted(Path(tb_dir).glob(f"{worker}.*.pt.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not written:
        raise RuntimeError(f"torch.profiler wrote no trace into {tb_dir}")
    return prof, written[-1]


@dataclass(frozen=True)
class InductorModule:
    """A wrapper module Inductor generated: its kernels (name -> kind, e.g. cpp_pybinding, triton) and the kernel
    calls of its `call` function, in order."""

    path: str
    kernels: dict[str, str]
    calls: tuple[str, ...]


_MODULES: dict[tuple[str, int], InductorModule | None] = {}


def inductor_module(path: str, line: int) -> InductorModule | None:
    """The generated module at `path` whose `call` is defined at `line` (1-based), or None when `path` is not
    Inductor output."""
    key = (path, line)
    if key not in _MODULES:
        try:
            source = Path(path).read_text()
        except OSError:
            source = ""
        if "async_compile" not in source:
            _MODULES[key] = None
        else:
            kernels = {m.group(1): m.group(2) for m in _KERNEL_DEF.finditer(source)}
            lines = source.splitlines()[line - 1 :]
            indent = len(lines[0]) - len(lines[0].lstrip()) if lines else 0
            body = []
            for text in lines[1:]:  # the body: up to the next line indented no deeper than `def call`
                if text.strip() and len(text) - len(text.lstrip()) <= indent:
                    break
                body.append(text)
            calls = tuple(
                m.group(1)
                for m in (re.match(r"^\s+(\w+)(?:\.run)?\(", text) for text in body)
                if m and m.group(1) in kernels
            )
            _MODULES[key] = InductorModule(path, kernels, calls)
    return _MODULES[key]


def _wrapper_module(e) -> InductorModule | None:
    match = _WRAPPER_CALL.match(e.name) if _activity(e) == "python_function" else None
    return inductor_module(match.group("path"), int(match.group("line"))) if match else None


@dataclass
class TorchTrace:
    steps: int
    step_ms: float | None
    event_counts: dict[str, int]
    op_times: list[tuple[str, float]]  # (name, microseconds) over all steps
    breakdown_source: str
    kernels: int  # over all steps
    kernels_counted: str
    kernel_calls: Counter = field(default_factory=Counter)  # name -> calls over all steps
    graph_calls: int = 0  # Inductor graphs entered, over all steps
    graphs: int = 0  # distinct Inductor graphs that ran (a training step's forward and backward count apart)
    generated_kernels: int | None = None
    generated_modules: list[str] = field(default_factory=list)
    operand_bytes: float | None = None  # per step
    operand_bytes_note: str | None = None


def _activity(e) -> str:
    """The event's kind as the Chrome trace names it (cpu_op, user_annotation, python_function, kernel, ...)."""
    kind = getattr(e, "activity_type", None)  # torch.profiler's own field in recent releases
    if kind:
        return str(kind)
    if getattr(e, "is_user_annotation", False):
        return "user_annotation"
    if getattr(e, "is_python_function", False):
        return "python_function"
    return "cpu_op" if str(e.device_type).endswith("CPU") else "kernel"


def _windows(events) -> list[tuple[float, float]]:
    return sorted(
        (e.time_range.start, e.time_range.end)
        for e in events
        if _activity(e) == "user_annotation" and e.name.startswith("ProfilerStep")
    )


def _inside(windows: list[tuple[float, float]], t: float) -> bool:
    return any(start <= t <= end for start, end in windows)


def _is_op(e) -> bool:
    return _activity(e) == "cpu_op" and bool(_OP_NAME.match(e.name)) and not e.name.startswith("autograd::")


def _computes(e, memo: dict) -> bool:
    """Whether `e` or an op nested in it does work (is not an allocation or view)."""
    key = id(e)
    if key not in memo:
        memo[key] = (_is_op(e) and e.name not in NON_COMPUTE) or any(_computes(c, memo) for c in e.cpu_children)
    return memo[key]


def _dispatched(e, memo: dict) -> bool:
    """An operator call from Python, compiled code or the autograd engine (no operator around it) that does work."""
    if not _is_op(e) or not _computes(e, memo):
        return False
    parent = e.cpu_parent
    while parent is not None:
        if _is_op(parent):
            return False
        parent = parent.cpu_parent
    return True


def _cpp_kernel_names(events) -> dict[int, str]:
    """id(event) -> kernel name for the calls of Inductor's C++ kernels, matched in order with the call sites of the
    wrapper's `call` (when the counts agree; else the generic name)."""
    names: dict[int, str] = {}
    for parent in events:
        module = _wrapper_module(parent)
        if module is None:
            continue
        kids = sorted(
            (c for c in parent.cpu_children if _CPP_KERNEL_CALL.match(c.name)), key=lambda c: c.time_range.start
        )
        cpp_calls = [n for n in module.calls if module.kernels[n].startswith("cpp")]
        for i, kid in enumerate(kids):
            names[id(kid)] = cpp_calls[i] if len(cpp_calls) == len(kids) else INDUCTOR_CPP_KERNEL
    return names


def analyze(events, cuda: bool) -> TorchTrace:
    """The fields of a torch.profiler recording (its `events()`), restricted to the profiled steps."""
    windows = _windows(events)
    inside = [e for e in events if _inside(windows, e.time_range.start)]
    steps = len(windows)
    step_ms = sum(end - start for start, end in windows) / steps / 1e3 if steps else None
    counts = Counter(_activity(e) for e in inside)
    cpp_names = _cpp_kernel_names(inside)
    found = {module.path: module for e in inside if (module := _wrapper_module(e)) is not None}
    modules = sorted(found)
    generated = sum(len(m.kernels) for m in found.values()) if found else None
    graph_events = [e for e in inside if e.name.startswith(GRAPH_CALL)]
    graphs = len({e.trace_name or e.name for e in graph_events})
    memo: dict = {}
    dispatched = [e for e in inside if _dispatched(e, memo)]
    cpp_calls = [e for e in inside if id(e) in cpp_names]
    if cuda:
        device = [e for e in inside if _activity(e) in DEVICE_ACTIVITIES]
        op_times = [(e.name, e.time_range.elapsed_us()) for e in device]
        kernel_events = [e for e in device if _activity(e) == "kernel"]
        kernel_calls = Counter(e.name for e in kernel_events)
        source, counted = "torch.profiler: CUDA device time (kernels, copies, memsets)", "CUDA kernel events"
    else:
        op_times = [(e.name, e.self_cpu_time_total) for e in inside if _is_op(e)]
        op_times += [(cpp_names[id(e)], e.self_cpu_time_total) for e in cpp_calls]
        kernel_calls = Counter(e.name for e in dispatched) + Counter(cpp_names[id(e)] for e in cpp_calls)
        source = "torch.profiler: CPU self time of operators and Inductor kernel calls"
        counted = "CPU: dispatched operator calls that compute (no views or allocations) + Inductor C++ kernel calls"
    operand_bytes, note = None, None
    if modules:
        note = "compiled graph: the trace records no operand shapes for generated kernels"
    elif steps:
        total = 0
        for e in dispatched:
            for shape, dtype in zip(e.input_shapes or (), e.input_dtypes or ()):
                total += tensor_bytes(shape, dtype) or 0
        operand_bytes = total / steps
    return TorchTrace(
        steps=steps,
        step_ms=step_ms,
        event_counts=dict(counts),
        op_times=op_times,
        breakdown_source=source,
        kernels=sum(kernel_calls.values()),
        kernels_counted=counted,
        kernel_calls=kernel_calls,
        graph_calls=len(graph_events),
        graphs=graphs,
        generated_kernels=generated,
        generated_modules=modules,
        operand_bytes=operand_bytes,
        operand_bytes_note=note,
    )

"""ONNX Runtime sessions on a chosen execution provider, graph optimization level and thread count.

The session must really run on the provider asked for: for CUDA and TensorRT the CPU fallback is disabled
(`session.disable_cpu_ep_fallback`), so a graph that cannot run there fails instead of silently running on the CPU,
and the session's provider list is checked. On CUDA, IOBinding binds torch CUDA tensors directly (no host copies in
the timed call); the `with_copies` variant feeds and fetches host arrays instead, to show what copies cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nn_speedups.optimizations.base import NotEngagedError, Runner

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
GRAPH_LEVELS = ("disabled", "basic", "extended", "all")

_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32}
_TORCH = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(int64)": torch.int64,
    "tensor(int32)": torch.int32,
}


@dataclass(frozen=True)
class OrtConfig:
    provider: str = "cpu"  # cpu | cuda | trt
    graph_level: str = "all"  # disabled | basic | extended | all
    intra_op_threads: int = 0  # 0: torch.get_num_threads(), recorded as the number actually used
    io_binding: bool = True  # CUDA/TensorRT only: bind torch CUDA tensors, no host copies
    trt_fp16: bool = False
    trt_cache_dir: str = "artifacts/ort-trt-cache"


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("ONNX Runtime variants need onnxruntime: pip install -e .") from None
    return onnxruntime


_RUN_OPTIONS = None


def run_options():
    """RunOptions for every session.run of the suite: a failing node comes back as the exception, which ends its case
    in one line (nn_speedups/measure/protocol.py), so ONNX Runtime does not also log it to stderr (severity 4: fatal
    only; 3
    still logs the failing node)."""
    global _RUN_OPTIONS
    if _RUN_OPTIONS is None:
        _RUN_OPTIONS = _ort().RunOptions()
        _RUN_OPTIONS.log_severity_level = 4
    return _RUN_OPTIONS


def provider_available(provider: str) -> str | None:
    """None when `provider` can run here, else the reason."""
    ort = _ort()
    name = PROVIDERS[provider]
    if name not in ort.get_available_providers():
        return f"this onnxruntime build has no {name} (available: {', '.join(ort.get_available_providers())})"
    if provider != "cpu" and not torch.cuda.is_available():
        return f"{name} needs a CUDA device"
    return None


def session_options(config: OrtConfig):
    ort = _ort()
    if config.graph_level not in GRAPH_LEVELS:
        raise ValueError(f"graph level {config.graph_level!r}: valid: {', '.join(GRAPH_LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[config.graph_level]
    options.intra_op_num_threads = config.intra_op_threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if config.provider != "cpu":
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return options


def _provider_entry(config: OrtConfig):
    name = PROVIDERS[config.provider]
    if config.provider == "cuda":
        device = torch.cuda.current_device()
        # run on torch's current stream, so the harness's synchronize covers ORT's work
        return (name, {"device_id": device, "user_compute_stream": str(torch.cuda.current_stream().cuda_stream)})
    if config.provider == "trt":
        Path(config.trt_cache_dir).mkdir(parents=True, exist_ok=True)
        return (
            name,
            {
                "device_id": torch.cuda.current_device(),
                "trt_fp16_enable": config.trt_fp16,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": config.trt_cache_dir,
                "trt_timing_cache_enable": True,
                "user_compute_stream": str(torch.cuda.current_stream().cuda_stream),
            },
        )
    return name


def create_session(onnx_path: str | Path, config: OrtConfig):
    ort = _ort()
    reason = provider_available(config.provider)
    if reason:
        raise RuntimeError(reason)
    session = ort.InferenceSession(str(onnx_path), session_options(config), providers=[_provider_entry(config)])
    wanted = PROVIDERS[config.provider]
    if session.get_providers()[0] != wanted:
        raise NotEngagedError(f"asked for {wanted}, the session runs on {session.get_providers()}")
    return session


def _host_runner(session, input_names: list[str]):
    output_names = [o.name for o in session.get_outputs()]

    def prepare(inputs: tuple) -> tuple:
        return tuple(x.detach().cpu().numpy() for x in inputs)

    def run(*arrays: np.ndarray):
        outputs = session.run(output_names, dict(zip(input_names, arrays)), run_options())
        return torch.from_numpy(outputs[0]) if len(outputs) == 1 else tuple(torch.from_numpy(o) for o in outputs)

    return prepare, run


def _cuda_copies_runner(session, input_names: list[str]):
    """Host arrays in, host arrays out: every call copies inputs to the GPU and outputs back."""
    output_names = [o.name for o in session.get_outputs()]

    def prepare(inputs: tuple) -> tuple:
        return tuple(inputs)  # torch CUDA tensors; the copies happen inside the timed call

    def run(*tensors: torch.Tensor):
        arrays = [t.cpu().numpy() for t in tensors]
        outputs = session.run(output_names, dict(zip(input_names, arrays)), run_options())
        return tuple(torch.from_numpy(o).to(tensors[0].device) for o in outputs)[0]

    return prepare, run


def _iobinding_runner(session, input_names: list[str]):
    """torch CUDA tensors bound in place; outputs into torch tensors allocated once per shape."""
    binding = session.io_binding()
    outputs_meta = session.get_outputs()
    buffers: dict[tuple, list[torch.Tensor]] = {}

    def prepare(inputs: tuple) -> tuple:
        expected = {i.name: _TORCH.get(i.type) for i in session.get_inputs()}
        return tuple(
            x.to(expected[n]).contiguous() if expected.get(n) else x.contiguous() for n, x in zip(input_names, inputs)
        )

    def run(*tensors: torch.Tensor):
        key = tuple(tuple(t.shape) for t in tensors)
        for name, t in zip(input_names, tensors):
            binding.bind_input(name, "cuda", t.device.index or 0, _NUMPY[t.dtype], tuple(t.shape), t.data_ptr())
        if key not in buffers:
            # first call at this shape: let ORT allocate, then keep torch buffers of the shapes it produced
            for meta in outputs_meta:
                binding.bind_output(meta.name, "cuda", tensors[0].device.index or 0)
            session.run_with_iobinding(binding, run_options())
            produced = binding.get_outputs()
            buffers[key] = [
                torch.empty(tuple(o.shape()), dtype=_TORCH[m.type], device=tensors[0].device)
                for o, m in zip(produced, outputs_meta)
            ]
            binding.clear_binding_outputs()
        for meta, out in zip(outputs_meta, buffers[key]):
            binding.bind_output(
                meta.name, "cuda", out.device.index or 0, _NUMPY[out.dtype], tuple(out.shape), out.data_ptr()
            )
        session.run_with_iobinding(binding, run_options())
        outs = buffers[key]
        return outs[0] if len(outs) == 1 else tuple(outs)

    return prepare, run


def _session_runner(session, config: OrtConfig, with_copies: bool):
    input_names = [i.name for i in session.get_inputs()]
    if config.provider == "cpu":
        return _host_runner(session, input_names)
    if with_copies or not config.io_binding:
        return _cuda_copies_runner(session, input_names)
    return _iobinding_runner(session, input_names)


# ONNX Runtime's profile: dtype names of its input/output shapes -> bytes per element
_ORT_DTYPE_BYTES = {"float": 4, "float16": 2, "bfloat16": 2, "double": 8, "int64": 8, "int32": 4, "int16": 2,
                    "int8": 1, "uint8": 1, "bool": 1}  # fmt: skip


def _node_bytes(args: dict) -> int | None:
    """Bytes of a profiled node's inputs and outputs, from the shapes ONNX Runtime recorded."""
    total = 0
    for entry in (args.get("input_type_shape") or []) + (args.get("output_type_shape") or []):
        for dtype, shape in entry.items():
            size = _ORT_DTYPE_BYTES.get(dtype)
            if size is None:
                return None
            n = 1
            for d in shape:
                n *= int(d)
            total += n * size
    return total


def profile_events(events: list[dict]) -> tuple[list[dict], list[float]]:
    """The node kernel times of an ONNX Runtime profile, per run after the first (the warm-up): ({"name", "op",
    "us", "bytes", "run"} per node execution, the duration in us of each of those runs)."""
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"]
    )
    timed = runs[1:]
    nodes = []
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        run = next((i for i, r in enumerate(timed) if r["ts"] <= e["ts"] <= r["ts"] + r["dur"]), None)
        if run is None:
            continue
        args = e.get("args") or {}
        name = e["name"].removesuffix("_kernel_time")
        op = args.get("op_name") or name
        nodes.append({"name": name, "op": op, "us": float(e["dur"]), "bytes": _node_bytes(args), "run": run})
    return nodes, [float(r["dur"]) for r in timed]


def profile_runs(
    onnx_path, config: OrtConfig, with_copies: bool, inputs: tuple, steps: int, out_dir, name: str
) -> dict:
    """Run `inputs` (prepared for a runner of this kind) 1 + `steps` times in a second session on the same ONNX
    file with ONNX Runtime's session profiling on (ORT profiles a session from its creation only, so the timed
    session stays unprofiled); its Chrome-format profile is gzipped into `out_dir`."""
    import gzip
    import json
    import shutil

    ort = _ort()
    options = session_options(config)
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(out_dir) / f"{name}.ort")
    session = ort.InferenceSession(str(onnx_path), options, providers=[_provider_entry(config)])
    _prepare, run = _session_runner(session, config, with_copies)
    for _ in range(1 + steps):
        run(*inputs)
        if config.provider != "cpu":
            torch.cuda.synchronize()
    raw = Path(session.end_profiling())
    events = json.loads(raw.read_text())
    packed = Path(out_dir) / f"{name}.ort.json.gz"
    with open(raw, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    raw.unlink()
    nodes, runs = profile_events(events)
    return {
        "source": "onnxruntime session profiling: node kernel time (a second session, same ONNX file)",
        "steps": len(runs),
        "step_ms": sum(runs) / len(runs) / 1e3 if runs else None,
        "ops": nodes,
        "trace_file": str(packed),
        "kernels_counted": "ONNX Runtime node kernels",
    }


def apply(model, example_inputs: tuple, config: OrtConfig, artifact, with_copies: bool = False) -> Runner:
    """A Runner over an ONNX Runtime session of `artifact` (an onnx_export.OnnxArtifact or anything with .path,
    .files and .input_names)."""
    session = create_session(artifact.path, config)
    prepare, run = _session_runner(session, config, with_copies)
    info = {
        "provider": session.get_providers()[0],
        "graph_level": config.graph_level,
        "intra_op_threads": session_options(config).intra_op_num_threads,
        "io_binding": config.provider != "cpu" and config.io_binding and not with_copies,
    }

    def engine_profile(inputs: tuple, steps: int, out_dir, name: str) -> dict:
        return profile_runs(artifact.path, config, with_copies, inputs, steps, out_dir, name)

    return Runner(
        fn=run,
        prepare=prepare,
        model=None,
        artifact_files=tuple(str(f) for f in artifact.files),
        info=info,
        engine_profile=engine_profile,
    )

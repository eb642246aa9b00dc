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

from optimizations.base import NotEngagedError, Runner

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
        outputs = session.run(output_names, dict(zip(input_names, arrays)))
        return torch.from_numpy(outputs[0]) if len(outputs) == 1 else tuple(torch.from_numpy(o) for o in outputs)

    return prepare, run


def _cuda_copies_runner(session, input_names: list[str]):
    """Host arrays in, host arrays out: every call copies inputs to the GPU and outputs back."""
    output_names = [o.name for o in session.get_outputs()]

    def prepare(inputs: tuple) -> tuple:
        return tuple(inputs)  # torch CUDA tensors; the copies happen inside the timed call

    def run(*tensors: torch.Tensor):
        arrays = [t.cpu().numpy() for t in tensors]
        outputs = session.run(output_names, dict(zip(input_names, arrays)))
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
            session.run_with_iobinding(binding)
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
        session.run_with_iobinding(binding)
        outs = buffers[key]
        return outs[0] if len(outs) == 1 else tuple(outs)

    return prepare, run


def apply(model, example_inputs: tuple, config: OrtConfig, artifact, with_copies: bool = False) -> Runner:
    """A Runner over an ONNX Runtime session of `artifact` (an onnx_export.OnnxArtifact or anything with .path,
    .files and .input_names)."""
    session = create_session(artifact.path, config)
    input_names = [i.name for i in session.get_inputs()]
    if config.provider == "cpu":
        prepare, run = _host_runner(session, input_names)
    elif with_copies or not config.io_binding:
        prepare, run = _cuda_copies_runner(session, input_names)
    else:
        prepare, run = _iobinding_runner(session, input_names)
    info = {
        "provider": session.get_providers()[0],
        "graph_level": config.graph_level,
        "intra_op_threads": session_options(config).intra_op_num_threads,
        "io_binding": config.provider != "cpu" and config.io_binding and not with_copies,
    }
    return Runner(fn=run, prepare=prepare, model=None, artifact_files=tuple(str(f) for f in artifact.files), info=info)

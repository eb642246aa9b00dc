"""Native TensorRT from an ONNX file through TensorRT's ONNX parser, with engine and timing caches.

Written against the TensorRT 10 Python API and aware of TensorRT 11:

- Precision. TensorRT 11 removed the weak-typing builder flags (`BuilderFlag.FP16`, `INT8`, ...): every network is
  strongly typed, so the *ONNX file* carries the precision: fp16 comes from the fp16 ONNX, INT8 from the QDQ ONNX.
  TensorRT 10 still has the flags (deprecated since 10.12), so an fp32 ONNX plus `FP16` still works there.
  `precision_plan` makes that choice as a pure function of the precision asked for, the ONNX at hand and the
  installed TensorRT; `build_engine` follows the plan and sets a flag only where `trt.BuilderFlag` has it.
- Dynamic batch. One optimization profile: dimension 0 of every input ranges over
  `[min_batch, max_batch]`, tuned for `opt_batch` (`profile_shapes`, `network_profile`).
- Caches under `TrtConfig.cache_dir`: a timing cache per (TensorRT version, GPU, compute capability) and serialized
  engines `<key>.engine` with a `<key>.json` sidecar, the key hashing the ONNX files (graph and external data), the
  TensorRT version, the GPU, the precision and the profile shapes (`engine_cache_key`). A cached engine that
  TensorRT cannot deserialize (another TensorRT build, a truncated file) is rebuilt.
- Execution with `execute_async_v3` on torch CUDA tensors and torch's current stream (no pycuda, no copies through
  the host); `TrtEngineRunner` never synchronizes: the harness does.

`import tensorrt` happens inside the functions that need it: this module imports on machines without TensorRT,
and everything that needs no GPU (cache keys, profile shapes, precision selection, ONNX inspection) works there.
TensorRT comes from NVIDIA's package index: `pip install -e .[trt]`.

This module is the optimization: `apply`, `TrtEngineRunner` and the per-layer profile. Two internal helpers hold
the rest, split by job to keep files small, and everything public is re-exported here (import it from this module):
optimizations/tensorrt_plan.py (what to build, pure: `TrtConfig`, `precision_plan`, profile shapes, cache keys,
ONNX inspection) and optimizations/tensorrt_build.py (the lazy import, the builder, the engine and timing caches).

Seed 003's example (ResNet-18 -> ONNX -> TensorRT, pycuda, `max_workspace_size`, `build_engine`, all gone from
TensorRT 10) becomes::

    import torch, torchvision
    from nn_speedups.optimizations import tensorrt as trt_opt

    model = torchvision.models.resnet18(weights="DEFAULT").eval().cuda().half()
    x = torch.randn(8, 3, 224, 224, device="cuda", dtype=torch.half)  # batch >= 2 keeps dim 0 dynamic
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(model, (x,), "resnet18_fp16.onnx", dynamo=True, dynamic_shapes=({0: batch},))
    runner = trt_opt.apply(model, (x,), trt_opt.TrtConfig(precision="fp16"), onnx_files=["resnet18_fp16.onnx"])
    with torch.inference_mode():
        logits = runner(*runner.prepare((x,)))  # enqueued on torch.cuda.current_stream()
    torch.cuda.synchronize()
    print(logits.argmax(1), runner.info)  # engine cache hit or build seconds, plan, TensorRT version
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nn_speedups.optimizations.base import NotEngagedError, Runner
from nn_speedups.optimizations.tensorrt_build import (
    INSTALL_HINT,
    EngineBuild,
    TrtFacts,
    _import_trt,
    _logger,
    _require_cuda,
    build_engine,
    gpu_facts,
    load_or_build,
    trt_facts,
)
from nn_speedups.optimizations.tensorrt_plan import (
    CACHE_SCHEMA,
    ONNX_VARIANTS,
    PRECISIONS,
    PrecisionPlan,
    ProfileShape,
    Shape,
    TrtConfig,
    engine_cache_key,
    network_profile,
    onnx_external_files,
    onnx_input_shapes,
    onnx_variant,
    precision_plan,
    profile_shapes,
    sha256_file,
    timing_cache_path,
)

__all__ = [
    "CACHE_SCHEMA",
    "INSTALL_HINT",
    "ONNX_VARIANTS",
    "PRECISIONS",
    "PRECISION_EVIDENCE",
    "EngineBuild",
    "PrecisionPlan",
    "ProfileShape",
    "Shape",
    "TrtConfig",
    "TrtEngineRunner",
    "TrtFacts",
    "apply",
    "build_engine",
    "engine_cache_key",
    "gpu_facts",
    "layer_profile",
    "layer_types",
    "load_or_build",
    "network_profile",
    "onnx_external_files",
    "onnx_input_shapes",
    "onnx_variant",
    "precision_plan",
    "profile_shapes",
    "sha256_file",
    "timing_cache_path",
    "trt_facts",
]


def _torch_dtypes(trt) -> dict:
    pairs = {
        "FLOAT": torch.float32,
        "HALF": torch.float16,
        "BF16": torch.bfloat16,
        "INT8": torch.int8,
        "UINT8": torch.uint8,
        "INT32": torch.int32,
        "INT64": torch.int64,
        "BOOL": torch.bool,
        "FP8": torch.float8_e4m3fn,
    }
    return {getattr(trt.DataType, name): dtype for name, dtype in pairs.items() if hasattr(trt.DataType, name)}


class TrtEngineRunner:
    """Runs a TensorRT engine on torch CUDA tensors, enqueued on torch's current stream; never synchronizes.

    Output tensors are reused from call to call while their shapes stay the same (as with CUDA graphs): a caller
    that keeps an output across calls must clone it.
    """

    def __init__(self, engine: Any, device: str | torch.device = "cuda"):
        trt = _import_trt()
        _require_cuda()
        self.device = torch.device(device)
        self._runtime = trt.Runtime(_logger())  # must outlive the engine
        if isinstance(engine, (str, Path)):
            engine = Path(engine).read_bytes()
        if isinstance(engine, (bytes, bytearray, memoryview)):
            engine = self._runtime.deserialize_cuda_engine(bytes(engine))
            if engine is None:
                raise RuntimeError("TensorRT could not deserialize the engine (see TensorRT's log above)")
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of device memory?)")
        dtypes = _torch_dtypes(trt)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: dtypes[engine.get_tensor_dtype(n)] for n in names}
        self.calls = 0
        self._shapes: dict[str, Shape] = {}
        self._outputs: dict[str, torch.Tensor] = {}

    def prepare(self, inputs: tuple) -> tuple:
        """The inputs on the engine's device, in its input dtypes, contiguous (done once, outside timing)."""
        self._check_count(inputs)
        return tuple(self._as_input(n, x) for n, x in zip(self.input_names, inputs))

    def _as_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.device, dtype=self.dtypes[name]).contiguous()

    def _set_input(self, name: str, x: torch.Tensor) -> None:
        shape = tuple(x.shape)
        if self._shapes.get(name) != shape:
            if not self.context.set_input_shape(name, shape):
                lo, _, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))
                raise ValueError(f"input {name!r} of shape {shape} is outside the engine's profile {lo} .. {hi}")
            self._shapes[name] = shape
        self.context.set_tensor_address(name, x.data_ptr())

    def _output(self, name: str) -> torch.Tensor:
        shape = tuple(self.context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise RuntimeError(f"output {name!r} has a data-dependent shape {shape}; not supported")
        buf = self._outputs.get(name)
        if buf is None or tuple(buf.shape) != shape:
            buf = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self._outputs[name] = buf
        self.context.set_tensor_address(name, buf.data_ptr())
        return buf

    def _check_count(self, inputs: Sequence[torch.Tensor]) -> None:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the engine takes {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        self._check_count(inputs)
        # Converted inputs come from torch's caching allocator on the current stream, so their memory is not
        # reused before the engine (enqueued on that same stream) has read it.
        ready = [self._as_input(n, x) for n, x in zip(self.input_names, inputs)]
        for name, x in zip(self.input_names, ready):
            self._set_input(name, x)
        outputs = [self._output(n) for n in self.output_names]
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see TensorRT's log above)")
        self.calls += 1
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def layer_info(self) -> str:
        """The engine inspector's JSON description of the layers (with their precisions when built DETAILED)."""
        trt = _import_trt()
        inspector = self.engine.create_engine_inspector()
        return inspector.get_engine_information(trt.LayerInformationFormat.JSON)


def layer_types(layer_info_json: str) -> dict[str, str]:
    """Layer name -> layer type (e.g. CaskConvolution, PointWiseV2, Reformat) from the engine inspector's JSON; empty
    when the engine was built without detailed profiling verbosity (the inspector then lists names only)."""
    try:
        layers = json.loads(layer_info_json).get("Layers", [])
    except (ValueError, AttributeError):
        return {}
    return {
        layer["Name"]: layer.get("LayerType", layer["Name"])
        for layer in layers
        if isinstance(layer, dict) and "Name" in layer
    }


def layer_profile(engine_runner: TrtEngineRunner, inputs: tuple, steps: int) -> dict:
    """TensorRT's per-layer times (an IProfiler on the runner's own execution context, no new engine) over `steps`
    executions after one warm-up, each synchronized. TensorRT reports every layer once per execute_async_v3 when a
    profiler is set; the profiler is detached again afterwards."""
    trt = _import_trt()
    reports: list[tuple[str, float]] = []

    class LayerTimes(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            reports.append((layer_name, ms))

    profiler = LayerTimes()
    context = engine_runner.context
    context.profiler = profiler
    try:
        engine_runner(*inputs)
        torch.cuda.synchronize(engine_runner.device)
        reports.clear()
        bounds = []
        for _ in range(steps):
            engine_runner(*inputs)
            torch.cuda.synchronize(engine_runner.device)
            bounds.append(len(reports))
    finally:
        try:
            context.profiler = None
        except TypeError:  # some TensorRT builds do not take None: the profiler stays, the pass is the last user
            pass
    types = layer_types(engine_runner.layer_info())
    ops, start = [], 0
    for step, end in enumerate(bounds):
        for layer, ms in reports[start:end]:
            ops.append({"name": layer, "op": types.get(layer, layer), "us": ms * 1e3, "bytes": None, "run": step})
        start = end
    return {
        "source": "tensorrt IProfiler: layer time",
        "steps": steps,
        "ops": ops,
        "trace_file": None,
        "kernels_counted": "TensorRT layers",
    }


# Evidence of each reduced precision in the inspector's layer formats (e.g. "Row major linear FP16 format",
# "Int8 NC/32HW32"); fp32 needs none.
PRECISION_EVIDENCE = {"fp16": ("fp16", "half"), "int8": ("int8",)}


def _input_shapes(onnx_path: Path, example_inputs: Sequence[torch.Tensor]) -> dict[str, Shape]:
    names = list(onnx_input_shapes(onnx_path))
    if len(names) != len(example_inputs):
        raise ValueError(f"{onnx_path} takes {len(names)} inputs {names}, got {len(example_inputs)} example inputs")
    return {name: tuple(x.shape) for name, x in zip(names, example_inputs)}


def _check_batch_in_profile(shapes: Mapping[str, Shape], config: TrtConfig) -> None:
    for name, shape in shapes.items():
        if shape and not config.min_batch <= shape[0] <= config.max_batch:
            raise ValueError(
                f"input {name!r} has batch {shape[0]}, outside the profile "
                f"[{config.min_batch}, {config.max_batch}] of {config}"
            )


def apply(
    model: nn.Module | None,
    example_inputs: tuple,
    config: TrtConfig,
    onnx_files: Sequence[str | Path],
) -> Runner:
    """A Runner executing `model` as a TensorRT engine built from an ONNX export the caller made first.

    onnx_files: the export's files (`OnnxArtifact.files`), the .onnx graph first. Only onnx_files[0] is read: the
        external-data files that the graph references are found from it, and hashed into the engine key with it
        (TensorRT's parser reads them from beside the graph). Which ONNX to export for `config.precision` on the
        installed TensorRT is `precision_plan(precision, "fp32", ...).onnx_variant`: "fp32", "fp16" (the model in
        half) or "qdq".
    The Runner's artifact is the engine file (its size is the model size); `model` is only for the caller's
    bookkeeping (the engine runs outside PyTorch).
    """
    _import_trt()
    _require_cuda()
    if not onnx_files:
        raise ValueError("apply needs onnx_files: the exported .onnx graph first, then its external data")
    onnx_path = Path(onnx_files[0])
    if onnx_path.suffix != ".onnx":
        raise ValueError(f"onnx_files[0] must be the .onnx graph, got {onnx_path}")
    input_shapes = _input_shapes(onnx_path, example_inputs)
    _check_batch_in_profile(input_shapes, config)
    built = load_or_build(onnx_path, input_shapes, config)
    engine_runner = TrtEngineRunner(built.data)
    facts = trt_facts()
    info = {
        "precision": config.precision,
        "onnx_variant": built.plan.onnx_variant,
        "strongly_typed": built.plan.strongly_typed,
        "builder_flags": ",".join(built.plan.builder_flags),
        "trt_version": facts.version,
        "engine_cache_hit": built.cache_hit,
        "engine_build_s": built.build_s,
        "engine_key": built.key[:16],
        "engine_bytes": len(built.data),
        "profile_batches": f"{config.min_batch}/{config.opt_batch}/{config.max_batch}",
    }

    def verify() -> None:
        if engine_runner.calls < 1:
            raise NotEngagedError("the TensorRT engine never ran")
        evidence = PRECISION_EVIDENCE.get(config.precision)
        if evidence:
            layers = engine_runner.layer_info().lower()
            if not any(word in layers for word in evidence):
                raise NotEngagedError(
                    f"TensorRT {config.precision} engine shows no {'/'.join(evidence)} layer in its inspector output"
                )

    return Runner(
        fn=engine_runner,
        prepare=engine_runner.prepare,
        model=None,
        artifact_files=(str(built.path),),
        verify=verify,
        info=info,
        engine_profile=lambda inputs, steps, out_dir, name: layer_profile(engine_runner, inputs, steps),
    )

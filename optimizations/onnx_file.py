"""What runs a model given as an ONNX file (`--onnx`; models/onnx_file.py describes the file): ONNX Runtime.

- forward: the file in an ONNX Runtime session at its own precision, on the inputs' device (CPUExecutionProvider for
  CPU tensors, CUDAExecutionProvider for CUDA ones): the baseline every ONNX Runtime and TensorRT variant is checked
  against.
- onnx_artifact: the file as its own export (optimizations/onnx_export.py returns it for this model), fp32 only.
- eager_runner: the eager row, timed like the ort-* rows.
- explain: an engine's failure on the graph traced to the inputs the failing node reads.

models/ imports no optimization: this module supplies itself to models/onnx_file.py on import (`supply_engine`), and
the measuring side (nn_speedups/measure/protocol.py) imports it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

from nn_speedups.models import onnx_file as model_file
from nn_speedups.models.onnx_file import OnnxFileModule, inputs_behind
from nn_speedups.models.onnx_inputs import GraphInput, describe
from nn_speedups.optimizations import onnxruntime as ort_
from nn_speedups.optimizations.onnx_export import ExportConfig, ExportError, OnnxArtifact, sha256_files


def _session(module: OnnxFileModule, kind: str):
    if kind not in module._sessions:
        module._sessions[kind] = ort_.create_session(module.path, ort_.OrtConfig(provider=kind))
    return module._sessions[kind]


def forward(module: OnnxFileModule, inputs: tuple[torch.Tensor, ...]):
    """Torch tensors in, torch tensors out, on the inputs' device (one output as a tensor, several as a tuple)."""
    device = inputs[0].device
    session = _session(module, "cuda" if device.type == "cuda" else "cpu")
    feeds = {name: x.detach().cpu().numpy() for name, x in zip(module.input_names, inputs)}
    outputs = [torch.from_numpy(o).to(device) for o in session.run(None, feeds, ort_.run_options())]
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def onnx_artifact(module: OnnxFileModule, config) -> OnnxArtifact:
    """The file as an onnx_export.OnnxArtifact: what `export` returns for this module (fp32 only: the file is what it
    is)."""
    if config.dtype != "fp32" or config.training:
        raise ExportError(
            f"{module.path} is benchmarked as given (--onnx): there is no {config.dtype}"
            f"{' training' if config.training else ''} export of it"
        )
    if module._artifact is None:
        import onnx

        graph = onnx.load(str(module.path), load_external_data=False).graph
        files = tuple(module.files)
        outputs = tuple(o.name for o in graph.output)
        module._artifact = OnnxArtifact(module.path, files, sha256_files(files), module.input_names, outputs, True)
    return module._artifact


def eager_runner(module: OnnxFileModule, example_inputs: tuple, ctx):
    """The eager row of an ONNX file: an ONNX Runtime session of it on the run's device (CPU, or CUDA with
    IOBinding) at full graph optimization, timed like the ort-* rows (inputs converted before timing)."""
    provider = "cuda" if torch.device(ctx.device).type == "cuda" else "cpu"
    artifact = onnx_artifact(module, ExportConfig(name=module.path.stem))
    runner = ort_.apply(module, example_inputs, ort_.OrtConfig(provider=provider), artifact)
    runner.model = module
    runner.info.update(baseline=f"onnxruntime {provider} (--onnx {module.path})")
    if provider != "cpu":
        runner.device_memory = "nvml"
    return runner


def explain(path: Path, inputs: list[GraphInput], message: str) -> str:
    """The input that most likely caused an engine's failure (`message`) on the graph at `path`, as a clause: the
    inputs the failing node reads (ONNX Runtime names it: Name:'NODE'), the given ones first, then the generated ones
    (integers before floats: a generated float seldom is it); "" when it reads none."""
    by_name = {i.name: i for i in inputs}
    match = re.search(r"Name:\s*'([^']+)'", message)
    names = inputs_behind(path, match.group(1)) if match else None
    names = [n for n in (names if names is not None else list(by_name)) if n in by_name]
    node = f"node {match.group(1)!r}" if match else "the graph"
    given = [by_name[n] for n in names if by_name[n].given is not None or by_name[n].value is not None]
    generated = [by_name[n] for n in names if by_name[n] not in given]
    generated.sort(key=lambda i: (i.dtype.is_floating_point, len(i.shape)))  # a generated float seldom is it
    parts = [f"{i.name} (from {i.source})" for i in given]
    parts += [f"{i.name} (generated: {describe(i)})" for i in generated]
    if not parts:
        return ""
    fix = (
        f": give the values the model expects with --onnx-input {generated[0].name}=VALUE or --onnx-inputs FILE.npz"
        if generated
        else ": check the values given"
    )
    return f"; {node} reads {', '.join(parts)}{fix}"


model_file.supply_engine(sys.modules[__name__])

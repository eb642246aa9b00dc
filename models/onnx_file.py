"""An existing ONNX file as a ModelSpec (`--onnx [NAME=]PATH`), benchmarked like trtexec or Polygraphy would.

There is no torch model: the spec builds `OnnxFileModule`, an nn.Module that runs the file in ONNX Runtime at its own
precision (fp32 for an fp32 graph) and is the baseline every ONNX Runtime and TensorRT variant is checked and timed
against. "Exporting" it (optimizations/onnx_export.py) returns the file itself. Variants that need a torch model skip
on it (harness/variant.py: Variant.onnx_file).

Inputs come from the graph's declared shapes and types: an open first dim is the batch (--batch-sizes); every other
open dim (a `dim_param` such as "sequence", or an unnamed one, called INPUT.AXIS) must be given with
`--onnx-dim NAME=SIZE`, else loading fails and asks for it. Floats are standard normal; integer inputs that index an
embedding table (a Gather on an initializer) draw ids below its row count, inputs named *mask* are attention masks
of random lengths, *position* ids count up, other integers are zeros; booleans are true.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from models.registry import ModelSpec
from models.user import USER_TAG, UserModelError, cause, clean_name

ONNX_TAG = "onnx-file"
GENERIC_STEMS = {"model", "graph", "network", "net"}


def _dtypes() -> dict[int, torch.dtype]:
    import onnx

    t = onnx.TensorProto
    return {
        t.FLOAT: torch.float32,
        t.FLOAT16: torch.float16,
        t.BFLOAT16: torch.bfloat16,
        t.DOUBLE: torch.float64,
        t.INT64: torch.int64,
        t.INT32: torch.int32,
        t.INT8: torch.int8,
        t.UINT8: torch.uint8,
        t.BOOL: torch.bool,
    }


class OnnxFileModule(nn.Module):
    """An ONNX file run by ONNX Runtime: the baseline of a model given as a file. Torch tensors in, torch tensors out
    (on the inputs' device: CPUExecutionProvider for CPU tensors, CUDAExecutionProvider for CUDA ones)."""

    def __init__(self, path: Path, input_names: tuple[str, ...], parameter_count: int) -> None:
        super().__init__()
        self.path = Path(path)
        self.input_names = tuple(input_names)
        self.parameter_count = parameter_count
        self._sessions: dict[str, object] = {}
        self._artifact = None

    def __deepcopy__(self, memo) -> OnnxFileModule:
        return OnnxFileModule(self.path, self.input_names, self.parameter_count)

    def _session(self, kind: str):
        if kind not in self._sessions:
            from optimizations import onnxruntime as ort_

            self._sessions[kind] = ort_.create_session(self.path, ort_.OrtConfig(provider=kind))
        return self._sessions[kind]

    def forward(self, *inputs: torch.Tensor):
        device = inputs[0].device
        session = self._session("cuda" if device.type == "cuda" else "cpu")
        feeds = {name: x.detach().cpu().numpy() for name, x in zip(self.input_names, inputs)}
        outputs = [torch.from_numpy(o).to(device) for o in session.run(None, feeds)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    @property
    def files(self) -> list[Path]:
        from optimizations.tensorrt import onnx_external_files

        return onnx_external_files(self.path)

    def onnx_artifact(self, config):
        """The file as an onnx_export.OnnxArtifact: what `export` returns for this module (fp32 only: the file is
        what it is)."""
        from optimizations.onnx_export import ExportError, OnnxArtifact, sha256_files

        if config.dtype != "fp32" or config.training:
            raise ExportError(
                f"{self.path} is benchmarked as given (--onnx): there is no {config.dtype}"
                f"{' training' if config.training else ''} export of it"
            )
        if self._artifact is None:
            import onnx

            graph = onnx.load(str(self.path), load_external_data=False).graph
            files = tuple(self.files)
            outputs = tuple(o.name for o in graph.output)
            self._artifact = OnnxArtifact(self.path, files, sha256_files(files), self.input_names, outputs, True)
        return self._artifact

    def eager_runner(self, example_inputs: tuple, ctx):
        """The eager row of an ONNX file: an ONNX Runtime session of it on the run's device (CPU, or CUDA with
        IOBinding) at full graph optimization, timed like the ort-* rows (inputs converted before timing)."""
        from optimizations import onnxruntime as ort_
        from optimizations.onnx_export import ExportConfig

        provider = "cuda" if torch.device(ctx.device).type == "cuda" else "cpu"
        artifact = self.onnx_artifact(ExportConfig(name=self.path.stem))
        runner = ort_.apply(self, example_inputs, ort_.OrtConfig(provider=provider), artifact)
        runner.model = self
        runner.info.update(baseline=f"onnxruntime {provider} (--onnx {self.path})")
        if provider != "cpu":
            runner.device_memory = "nvml"
        return runner


def _gathered_rows(graph, name: str, initializers: dict) -> int | None:
    """Rows of the embedding table that input `name` indexes (a Gather on an initializer along axis 0)."""
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == name:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            table = initializers.get(node.input[0])
            if table is not None and axis == 0 and table.dims:
                return int(table.dims[0])
    return None


def _make_inputs(specs: list[tuple], batch_dims: set[str], dims: dict[str, int]):
    """example_inputs(batch_size, image_size, device, seed) for inputs [(name, dtype, shape, rows)]."""

    def inputs(batch_size: int, image_size: int = 0, device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(seed)
        out = []
        for name, dtype, shape, rows in specs:
            size = tuple(batch_size if d in batch_dims else dims[d] if isinstance(d, str) else d for d in shape)
            lower = name.lower()
            if dtype.is_floating_point:
                x = torch.randn(size, generator=generator).to(dtype)
            elif dtype == torch.bool:
                x = torch.ones(size, dtype=torch.bool)
            elif rows is not None:
                x = torch.randint(0, rows, size, generator=generator, dtype=dtype)
            elif "mask" in lower and len(size) >= 2:
                length = size[-1]
                lengths = torch.randint(max(1, length // 2), length + 1, (*size[:-1], 1), generator=generator)
                x = (torch.arange(length) < lengths).to(dtype)
            elif "position" in lower and size:
                x = torch.arange(size[-1], dtype=dtype).expand(size).contiguous()
            else:
                x = torch.zeros(size, dtype=dtype)
            out.append(x.to(device))
        return tuple(out)

    return inputs


def _split(entry: str) -> tuple[str | None, str]:
    name, sep, path = entry.partition("=")
    if sep and name and "/" not in name and not name.endswith(".onnx"):
        return name, path
    return None, entry


def onnx_spec(entry: str, dims: dict[str, int]) -> tuple[ModelSpec, set[str]]:
    """(spec, the names of the graph's open non-batch dims) for `--onnx [NAME=]PATH`; `dims` sizes the open dims."""
    where = f"--onnx {entry}"
    given_name, raw = _split(entry)
    path = Path(raw).expanduser()
    if not path.is_file():
        raise UserModelError(f"{where}: no such file (give the .onnx graph; its external data sits beside it)")
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as error:  # noqa: BLE001 - protobuf and onnx raise many kinds for a file that is not ONNX
        raise UserModelError(f"{where}: not an ONNX model onnx can read ({cause(error)})") from None
    from optimizations.tensorrt import onnx_external_files

    missing_data = [f for f in onnx_external_files(path)[1:] if not f.is_file()]
    if missing_data:
        raise UserModelError(f"{where}: its external data {missing_data[0]} is missing (it must sit beside the graph)")
    initializers = {t.name: t for t in graph.initializer}
    graph_inputs = [i for i in graph.input if i.name not in initializers]
    if not graph_inputs:
        raise UserModelError(f"{where}: the graph has no inputs to feed")
    dtypes = _dtypes()
    specs, batch_dims, open_dims, fixed_batch = [], set(), {}, set()
    for value in graph_inputs:
        tensor = value.type.tensor_type
        if tensor.elem_type not in dtypes:
            raise UserModelError(f"{where}: input {value.name!r} has ONNX element type {tensor.elem_type}: not fed")
        shape = []
        for axis, dim in enumerate(tensor.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(int(dim.dim_value))
                if axis == 0:
                    fixed_batch.add(int(dim.dim_value))
                continue
            symbol = dim.dim_param or f"{value.name}.{axis}"
            if axis == 0:
                batch_dims.add(symbol)
            shape.append(symbol)
        specs.append((value.name, dtypes[tensor.elem_type], tuple(shape), None))
    for name, _, shape, _ in specs:
        for d in shape:
            if isinstance(d, str) and d not in batch_dims:
                open_dims.setdefault(d, name)
    missing = [d for d in open_dims if d not in dims]
    if missing:
        asks = " ".join(f"--onnx-dim {d}=SIZE" for d in missing)
        raise UserModelError(
            f"{where}: the graph leaves these input dims open: "
            f"{', '.join(f'{d} (input {open_dims[d]})' for d in missing)}; give their sizes: {asks}"
        )
    specs = [(n, t, s, None if t.is_floating_point else _gathered_rows(graph, n, initializers)) for n, t, s, _ in specs]
    first = specs[0]
    sizes = [d if isinstance(d, int) else dims.get(d) for d in first[2]]
    tags = {ONNX_TAG, USER_TAG}
    if len(specs) == 1 and first[1].is_floating_point and len(sizes) == 4 and sizes[1] == 3 and sizes[2] == sizes[3]:
        tags.add("vision")
    has_conv = any(n.op_type == "Conv" for n in graph.node)
    if has_conv and any(t.is_floating_point and len(s) == 4 for _, t, s, _ in specs):
        tags.add("conv")
    if any(not t.is_floating_point and t != torch.bool and len(s) >= 2 for _, t, s, _ in specs):
        tags.add("nlp")
    num_classes = None
    if "vision" in tags and len(graph.output) == 1:
        out_dims = graph.output[0].type.tensor_type.shape.dim
        if len(out_dims) == 2 and out_dims[1].HasField("dim_value") and out_dims[1].dim_value > 1:
            num_classes = int(out_dims[1].dim_value)
    stem = path.stem if path.stem.lower() not in GENERIC_STEMS else path.resolve().parent.name
    name = given_name or clean_name(stem) or "onnx-model"
    input_names = tuple(n for n, *_ in specs)
    count = sum(math.prod(t.dims) for t in graph.initializer)
    resolved = path.resolve()
    spec = ModelSpec(
        name=name,
        build=lambda image_size=None: OnnxFileModule(resolved, input_names, count),
        example_inputs=_make_inputs(specs, batch_dims, dims),
        default_batch_sizes=(1, 8),
        num_classes=num_classes,
        tags=frozenset(tags),
        input_names=input_names,
        image_size=sizes[2] if "vision" in tags else None,
        batch_sizes=tuple(sorted(fixed_batch)) if fixed_batch and not batch_dims else None,
    )
    return spec, set(open_dims)

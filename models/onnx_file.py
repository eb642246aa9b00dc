"""An existing ONNX file as a ModelSpec (`--onnx [NAME=]PATH`), benchmarked like trtexec or Polygraphy would.

There is no torch model: the spec builds `OnnxFileModule`, an nn.Module that runs the file in ONNX Runtime at its own
precision (fp32 for an fp32 graph) and is the baseline every ONNX Runtime and TensorRT variant is checked and timed
against. "Exporting" it returns the file itself. Variants that need a torch model skip on it
(nn_speedups/matrix/variant.py: Variant.onnx_file). This module describes the file (its inputs, dims, types, files);
what runs it is the engine supplied from outside models/ (`OnnxFileEngine`, `supply_engine`).

Inputs come from the graph's declared shapes and types: an open first dim is the batch (--batch-sizes), and so is
that dim's symbol wherever another input uses it (a recurrent state [2, batch, 128]); every other open dim (a
`dim_param` such as "sequence", or an unnamed one, called INPUT.AXIS) must be given with `--onnx-dim NAME=SIZE`, or
by an array of `--onnx-inputs`, else loading fails and asks for it. What the user gives them (--onnx-inputs,
--onnx-input) and what the suite generates for the rest: models/onnx_inputs.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from nn_speedups.models.onnx_inputs import (
    GraphInput,
    OnnxInputs,
    bind_given,
    make_inputs,
    parse_inputs,  # noqa: F401 - imported from here (models/user.py, tests)
)
from nn_speedups.models.registry import ModelSpec
from nn_speedups.models.user import USER_TAG, UserModelError, cause, clean_name

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
        t.INT16: torch.int16,
        t.INT8: torch.int8,
        t.UINT8: torch.uint8,
        t.BOOL: torch.bool,
    }


# models/ describes what runs and imports no optimization. What runs and inspects an ONNX file (ONNX Runtime
# sessions, its eager row, the file as its own export artifact, an engine's failure message read) is
# nn_speedups.optimizations.onnx_file, which supplies itself here on import; the measuring side
# (nn_speedups/measure/protocol.py) imports it.
class OnnxFileEngine(Protocol):
    """What runs an ONNX file: its forward, the file as its export, its eager row, an engine's failure explained."""

    def forward(self, module: OnnxFileModule, inputs: tuple[torch.Tensor, ...]): ...

    def onnx_artifact(self, module: OnnxFileModule, config): ...

    def eager_runner(self, module: OnnxFileModule, example_inputs: tuple, ctx): ...

    def explain(self, path: Path, inputs: list[GraphInput], message: str) -> str: ...


_ENGINE: OnnxFileEngine | None = None


def supply_engine(engine: OnnxFileEngine) -> None:
    """Install what runs ONNX files in this process."""
    global _ENGINE
    _ENGINE = engine


def engine() -> OnnxFileEngine:
    if _ENGINE is None:
        raise RuntimeError(
            "nothing runs ONNX files in this process: the suite's measuring side supplies ONNX Runtime "
            "(import nn_speedups.measure.protocol first)"
        )
    return _ENGINE


def _tensors(graph):
    """Every tensor proto of a graph: initializers and tensor attributes, subgraphs (If, Loop, Scan) included."""
    import onnx

    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _tensors(sub)


def external_files(path: str | Path, graph=None) -> list[Path]:
    """The ONNX graph file followed by the external-data files its tensors point to (what the model is on disk).
    `graph`: the file's graph when it is already loaded."""
    import onnx

    if graph is None:
        graph = onnx.load(str(path), load_external_data=False).graph
    locations = {
        entry.value
        for tensor in _tensors(graph)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return [Path(path), *(Path(path).parent / loc for loc in sorted(locations))]


class OnnxFileModule(nn.Module):
    """An ONNX file run by ONNX Runtime: the baseline of a model given as a file. Torch tensors in, torch tensors out
    (on the inputs' device: CPUExecutionProvider for CPU tensors, CUDAExecutionProvider for CUDA ones). It holds
    what runs (the file, its inputs' names, its parameter count) and the engine's sessions; the engine runs it."""

    def __init__(self, path: Path, input_names: tuple[str, ...], parameter_count: int) -> None:
        super().__init__()
        self.path = Path(path)
        self.input_names = tuple(input_names)
        self.parameter_count = parameter_count
        self._sessions: dict[str, object] = {}  # the engine's, by provider kind
        self._artifact = None  # the engine's: the file as its export artifact

    def __deepcopy__(self, memo) -> OnnxFileModule:
        return OnnxFileModule(self.path, self.input_names, self.parameter_count)

    def forward(self, *inputs: torch.Tensor):
        return engine().forward(self, inputs)

    @property
    def files(self) -> list[Path]:
        return external_files(self.path)

    def onnx_artifact(self, config):
        """The file as an onnx_export.OnnxArtifact: what `export` returns for this module (fp32 only: the file is
        what it is)."""
        return engine().onnx_artifact(self, config)

    def eager_runner(self, example_inputs: tuple, ctx):
        """The eager row of an ONNX file: an ONNX Runtime session of it on the run's device (CPU, or CUDA with
        IOBinding) at full graph optimization, timed like the ort-* rows (inputs converted before timing)."""
        return engine().eager_runner(self, example_inputs, ctx)


def _gathered_rows(graph, name: str, initializers: dict) -> int | None:
    """Rows of the embedding table that input `name` indexes (a Gather on an initializer along axis 0)."""
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == name:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            table = initializers.get(node.input[0])
            if table is not None and axis == 0 and table.dims:
                return int(table.dims[0])
    return None


def _reads(node) -> set[str]:
    """Every value a node reads: its inputs and, for control flow (If, Loop, Scan), what its subgraphs read."""
    names = set(node.input)
    for attribute in node.attribute:
        for graph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
            for inner in graph.node:
                names |= _reads(inner)
    return names


def _top_node(graph, name: str):
    """The top-level node named `name`, or the one whose subgraph holds it (a node inside an If branch)."""

    def holds(node) -> bool:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                if any(inner.name == name or holds(inner) for inner in sub.node):
                    return True
        return False

    return next((n for n in graph.node if n.name == name), None) or next((n for n in graph.node if holds(n)), None)


def inputs_behind(path: Path, node_name: str) -> list[str] | None:
    """The graph inputs that node `node_name` depends on (through the nodes before it), in the graph's order; None
    when the graph has no such node."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    node = _top_node(graph, node_name)
    if node is None:
        return None
    producers = {out: n for n in graph.node for out in n.output}
    inputs = [i.name for i in graph.input]
    seen, todo, found = set(), list(_reads(node)), set()
    while todo:
        value = todo.pop()
        if value in seen:
            continue
        seen.add(value)
        if value in inputs:
            found.add(value)
        elif value in producers:
            todo.extend(_reads(producers[value]))
    return [name for name in inputs if name in found]


def _explainer(path: Path, specs: list[GraphInput]):
    """explain(engine message) -> the input that most likely caused an engine's failure on this graph, as a clause
    (the engine reads its own message: engine().explain)."""
    return lambda message: engine().explain(path, specs, message)


def _split(entry: str) -> tuple[str | None, str]:
    name, sep, path = entry.partition("=")
    if sep and name and "/" not in name and not name.endswith(".onnx"):
        return name, path
    return None, entry


def onnx_spec(entry: str, dims: dict[str, int], given: OnnxInputs | None = None) -> tuple[ModelSpec, set[str]]:
    """(spec, the names of the graph's open non-batch dims) for `--onnx [NAME=]PATH`; `dims` sizes the open dims,
    `given` holds what the user gives its inputs (the names it uses go into given.used)."""
    given = given or OnnxInputs()
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
    missing_data = [f for f in external_files(path, graph)[1:] if not f.is_file()]
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
        specs.append(GraphInput(value.name, dtypes[tensor.elem_type], tuple(shape)))
    for i in specs:
        for d in i.shape:
            if isinstance(d, str) and d not in batch_dims:
                open_dims.setdefault(d, i.name)
    dims = dict(dims)  # plus the sizes the given arrays fix
    specs = [
        GraphInput(
            i.name, i.dtype, i.shape, None if i.dtype.is_floating_point else _gathered_rows(graph, i.name, initializers)
        )
        for i in specs
    ]
    specs = [bind_given(i, given, batch_dims, dims, where) for i in specs]
    missing = [d for d in open_dims if d not in dims]
    if missing:
        asks = " ".join(f"--onnx-dim {d}=SIZE" for d in missing)
        raise UserModelError(
            f"{where}: the graph leaves these input dims open: "
            f"{', '.join(f'{d} (input {open_dims[d]})' for d in missing)}; give their sizes: {asks} "
            "(or the inputs themselves: --onnx-inputs FILE.npz)"
        )
    first = specs[0]
    sizes = [d if isinstance(d, int) else dims.get(d) for d in first.shape]
    tags = {ONNX_TAG, USER_TAG}
    vision = len(sizes) == 4 and sizes[1] == 3 and sizes[2] == sizes[3] and first.given is None
    if len(specs) == 1 and first.dtype.is_floating_point and vision:
        tags.add("vision")
    has_conv = any(n.op_type == "Conv" for n in graph.node)
    if has_conv and any(i.dtype.is_floating_point and len(i.shape) == 4 for i in specs):
        tags.add("conv")
    if any(not i.dtype.is_floating_point and i.dtype != torch.bool and len(i.shape) >= 2 for i in specs):
        tags.add("nlp")
    num_classes = None
    if "vision" in tags and len(graph.output) == 1:
        out_dims = graph.output[0].type.tensor_type.shape.dim
        if len(out_dims) == 2 and out_dims[1].HasField("dim_value") and out_dims[1].dim_value > 1:
            num_classes = int(out_dims[1].dim_value)
    stem = path.stem if path.stem.lower() not in GENERIC_STEMS else path.resolve().parent.name
    name = given_name or clean_name(stem) or "onnx-model"
    input_names = tuple(i.name for i in specs)
    count = sum(math.prod(t.dims) for t in graph.initializer)
    resolved = path.resolve()
    spec = ModelSpec(
        name=name,
        build=lambda image_size=None: OnnxFileModule(resolved, input_names, count),
        example_inputs=make_inputs(specs, batch_dims, dims, where),
        explain_failure=_explainer(resolved, specs),
        default_batch_sizes=(1, 8),
        num_classes=num_classes,
        tags=frozenset(tags),
        input_names=input_names,
        image_size=sizes[2] if "vision" in tags else None,
        batch_sizes=tuple(sorted(fixed_batch)) if fixed_batch and not batch_dims else None,
    )
    return spec, set(open_dims)

"""An existing ONNX file as a ModelSpec (`--onnx [NAME=]PATH`), benchmarked like trtexec or Polygraphy would.

There is no torch model: the spec builds `OnnxFileModule`, an nn.Module that runs the file in ONNX Runtime at its own
precision (fp32 for an fp32 graph) and is the baseline every ONNX Runtime and TensorRT variant is checked and timed
against. "Exporting" it (optimizations/onnx_export.py) returns the file itself. Variants that need a torch model skip
on it (harness/variant.py: Variant.onnx_file).

Inputs come from the graph's declared shapes and types: an open first dim is the batch (--batch-sizes), and so is
that dim's symbol wherever another input uses it (a recurrent state [2, batch, 128]); every other open dim (a
`dim_param` such as "sequence", or an unnamed one, called INPUT.AXIS) must be given with `--onnx-dim NAME=SIZE`, or
by an array of `--onnx-inputs`, else loading fails and asks for it.

What a user gives comes first (`OnnxInputs`): `--onnx-inputs FILE.npz` holds arrays by input name (np.savez), each
used as saved where its batch dims match the case's batch size and tiled (rows repeated, then cut) along them where
they do not; `--onnx-input NAME=VALUE` gives a scalar or a small constant (`sr=16000`, `scale=0.5,0.5`), filled to
the input's declared shape. Both take the graph's declared element type. What is left the suite generates: floats
standard normal; integer inputs that index an embedding table (a Gather on an initializer) draw ids below its row
count, inputs named *mask* are attention masks of random lengths, *position* ids count up, other integer tensors
are zeros; booleans are true. An integer scalar (a sample rate, a flag, a count) cannot be guessed: a case of such a
graph fails in one line naming the input and the `--onnx-input` to give. INT8 calibration batches come from the same
inputs (given arrays as given; generated ones with other seeds).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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
        t.INT16: torch.int16,
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
        from optimizations.onnxruntime import run_options

        outputs = [torch.from_numpy(o).to(device) for o in session.run(None, feeds, run_options())]
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


@dataclass
class OnnxInputs:
    """What the user gives an --onnx graph: `arrays` from --onnx-inputs FILE.npz and `values` from --onnx-input
    NAME=VALUE, by input name (each file takes the names it has; `used` collects them, to refuse the others)."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # name -> where it came from, for messages
    used: set[str] = field(default_factory=set)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?inf|nan", re.IGNORECASE)


def parse_inputs(files: list[str] | None, values: list[str] | None) -> OnnxInputs:
    """--onnx-inputs FILE.npz (repeatable) and --onnx-input NAME=VALUE (repeatable) -> OnnxInputs."""
    given = OnnxInputs()
    for entry in files or []:
        path = Path(entry).expanduser()
        if not path.is_file():
            raise UserModelError(f"--onnx-inputs {entry}: no such file (an .npz of arrays by input name: np.savez)")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except Exception as error:  # noqa: BLE001 - numpy raises many kinds for a file that is not an .npz
            raise UserModelError(f"--onnx-inputs {entry}: not an .npz numpy can read ({cause(error)})") from None
        if not arrays:
            raise UserModelError(f"--onnx-inputs {entry}: the file holds no arrays")
        for name, array in arrays.items():
            if name in given.arrays:
                raise UserModelError(f"--onnx-inputs {entry}: input {name!r} is also in {given.sources[name]}")
            given.arrays[name], given.sources[name] = array, f"--onnx-inputs {entry}"
    for entry in values or []:
        name, sep, text = entry.partition("=")
        name = name.strip()
        numbers = [t.strip() for t in text.split(",")]
        if not sep or not name or not all(_NUMBER.fullmatch(t) for t in numbers):
            raise UserModelError(
                f"--onnx-input {entry!r}: give NAME=VALUE with a number or comma-separated numbers, e.g. sr=16000"
            )
        if name in given.arrays or name in given.values:
            raise UserModelError(f"--onnx-input {entry}: input {name!r} is also given by {given.sources[name]}")
        ints = all(re.fullmatch(r"[-+]?\d+", t) for t in numbers)
        given.values[name] = np.array([int(t) if ints else float(t) for t in numbers])
        given.sources[name] = f"--onnx-input {entry}"
    return given


def _numpy_dtype(dtype: torch.dtype):
    return torch.empty(0, dtype=dtype).numpy().dtype


def _as_type(array: np.ndarray, dtype: torch.dtype, where: str) -> np.ndarray:
    """`array` in the input's declared element type; integers given as floats must be whole numbers."""
    target = _numpy_dtype(dtype)
    if array.dtype == target:
        return array
    if array.dtype.kind not in "biuf":
        raise UserModelError(f"{where}: an array of {array.dtype} for an input of {target}: give numbers")
    cast = array.astype(target)
    if target.kind in "biu" and array.dtype.kind == "f" and not np.array_equal(cast, array):
        raise UserModelError(f"{where}: the input takes {target}, the values given are not whole numbers")
    return cast


@dataclass(frozen=True)
class _Input:
    name: str
    dtype: torch.dtype
    shape: tuple  # ints and dim symbols
    rows: int | None = None  # an embedding table's row count, for ids
    given: np.ndarray | None = None  # an --onnx-inputs array (as saved)
    value: np.ndarray | None = None  # an --onnx-input value (filled to the shape)
    source: str = ""


def integer_scalar(i: _Input) -> bool:
    """An integer input of one value with nothing to say what it should be (not ids, not a mask or positions)."""
    ints = not i.dtype.is_floating_point and i.dtype != torch.bool
    single = all(isinstance(d, int) for d in i.shape) and math.prod(i.shape) == 1
    lower = i.name.lower()
    return ints and single and i.rows is None and "mask" not in lower and "position" not in lower


def _tile(array: np.ndarray, axes: list[int], batch_size: int) -> np.ndarray:
    for axis in axes:
        if array.shape[axis] != batch_size:
            array = np.take(array, np.arange(batch_size) % array.shape[axis], axis=axis)
    return array


def _make_inputs(specs: list[_Input], batch_dims: set[str], dims: dict[str, int], where: str):
    """example_inputs(batch_size, image_size, device, seed) for the graph's inputs."""
    unknown = [i.name for i in specs if i.given is None and i.value is None and integer_scalar(i)]

    def inputs(batch_size: int, image_size: int = 0, device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor, ...]:
        if unknown:
            raise UserModelError(
                f"{where}: input {unknown[0]!r} is an integer scalar the suite cannot guess (a sample rate, a flag, "
                f"a count): give its value, e.g. --onnx-input {unknown[0]}=VALUE"
                + (f" (also: {', '.join(unknown[1:])})" if len(unknown) > 1 else "")
            )
        generator = torch.Generator().manual_seed(seed)
        out = []
        for i in specs:
            size = tuple(batch_size if d in batch_dims else dims[d] if isinstance(d, str) else d for d in i.shape)
            lower = i.name.lower()
            if i.given is not None:
                axes = [a for a, d in enumerate(i.shape) if d in batch_dims]
                x = torch.from_numpy(np.array(_tile(i.given, axes, batch_size), copy=True))
            elif i.value is not None:
                x = torch.from_numpy(np.broadcast_to(i.value, size).copy())  # (ascontiguousarray makes 0-d 1-d)
            elif i.dtype.is_floating_point:
                x = torch.randn(size, generator=generator).to(i.dtype)
            elif i.dtype == torch.bool:
                x = torch.ones(size, dtype=torch.bool)
            elif i.rows is not None:
                x = torch.randint(0, i.rows, size, generator=generator, dtype=i.dtype)
            elif "mask" in lower and len(size) >= 2:
                length = size[-1]
                lengths = torch.randint(max(1, length // 2), length + 1, (*size[:-1], 1), generator=generator)
                x = (torch.arange(length) < lengths).to(i.dtype)
            elif "position" in lower and size:
                x = torch.arange(size[-1], dtype=i.dtype).expand(size).contiguous()
            else:
                x = torch.zeros(size, dtype=i.dtype)
            out.append(x.to(device))
        return tuple(out)

    return inputs


def _bind_given(i: _Input, given: OnnxInputs, batch_dims: set[str], dims: dict[str, int], where: str) -> _Input:
    """The input with what the user gave for it, checked against its declared shape; an array's sizes for open
    non-batch dims go into `dims` (a clash with --onnx-dim or another array is an error)."""
    if i.name in given.arrays:
        source = given.sources[i.name]
        array = _as_type(given.arrays[i.name], i.dtype, f"{where}: {source}: input {i.name!r}")
        if array.ndim != len(i.shape):
            raise UserModelError(
                f"{where}: {source}: input {i.name!r} has {array.ndim} dims, the graph declares {len(i.shape)} "
                f"({_shape_text(i.shape)})"
            )
        for axis, (d, n) in enumerate(zip(i.shape, array.shape)):
            if isinstance(d, int) and d != n:
                raise UserModelError(
                    f"{where}: {source}: input {i.name!r} is {tuple(array.shape)}, the graph declares "
                    f"{_shape_text(i.shape)} (dim {axis} must be {d})"
                )
            if isinstance(d, str) and d not in batch_dims:
                if dims.setdefault(d, n) != n:
                    raise UserModelError(
                        f"{where}: {source}: input {i.name!r} sets dim {d} to {n}, but it is {dims[d]} elsewhere "
                        "(--onnx-dim or another input)"
                    )
        given.used.add(i.name)
        return _Input(i.name, i.dtype, i.shape, i.rows, given=array, source=source)
    if i.name in given.values:
        source = given.sources[i.name]
        value = _as_type(given.values[i.name], i.dtype, f"{where}: {source}")
        given.used.add(i.name)
        if value.size == 1:
            return _Input(i.name, i.dtype, i.shape, i.rows, value=value.reshape(()), source=source)
        tail = i.shape[-1] if i.shape else None
        if tail is None or (isinstance(tail, int) and tail != value.size):
            raise UserModelError(
                f"{where}: {source}: {value.size} values for input {i.name!r} of shape {_shape_text(i.shape)}: give "
                f"one value, or as many as its last dim{f' ({tail})' if tail else ''}; "
                "larger arrays go in --onnx-inputs"
            )
        if isinstance(tail, str) and dims.setdefault(tail, value.size) != value.size:
            raise UserModelError(f"{where}: {source}: {value.size} values, but dim {tail} is {dims[tail]}")
        return _Input(i.name, i.dtype, i.shape, i.rows, value=value, source=source)
    return i


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


def _explainer(path: Path, specs: list[_Input]):
    """explain(engine message) -> the input that most likely caused an engine's failure on this graph, as a clause."""
    by_name = {i.name: i for i in specs}

    def explain(message: str) -> str:
        match = re.search(r"Name:\s*'([^']+)'", message)
        names = inputs_behind(path, match.group(1)) if match else None
        names = [n for n in (names if names is not None else list(by_name)) if n in by_name]
        node = f"node {match.group(1)!r}" if match else "the graph"
        given = [by_name[n] for n in names if by_name[n].given is not None or by_name[n].value is not None]
        generated = [by_name[n] for n in names if by_name[n] not in given]
        generated.sort(key=lambda i: (i.dtype.is_floating_point, len(i.shape)))  # a generated float seldom is it
        parts = [f"{i.name} (from {i.source})" for i in given]
        parts += [f"{i.name} (generated: {_describe(i)})" for i in generated]
        if not parts:
            return ""
        fix = (
            f": give the values the model expects with --onnx-input {generated[0].name}=VALUE or --onnx-inputs FILE.npz"
            if generated
            else ": check the values given"
        )
        return f"; {node} reads {', '.join(parts)}{fix}"

    return explain


def _describe(i: _Input) -> str:
    kind = str(i.dtype).removeprefix("torch.")
    if i.dtype.is_floating_point:
        return f"{kind} {_shape_text(i.shape)} of standard normal values"
    if i.rows is not None:
        return f"{kind} ids below {i.rows}"
    if i.dtype == torch.bool:
        return f"bool {_shape_text(i.shape)}, all true"
    lower = i.name.lower()
    if "mask" in lower:
        return f"{kind} {_shape_text(i.shape)}, an attention mask of random lengths"
    if "position" in lower:
        return f"{kind} {_shape_text(i.shape)}, positions counting up"
    return f"{kind} {_shape_text(i.shape)}, zeros"


def _shape_text(shape: tuple) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


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
        specs.append(_Input(value.name, dtypes[tensor.elem_type], tuple(shape)))
    for i in specs:
        for d in i.shape:
            if isinstance(d, str) and d not in batch_dims:
                open_dims.setdefault(d, i.name)
    dims = dict(dims)  # plus the sizes the given arrays fix
    specs = [
        _Input(
            i.name, i.dtype, i.shape, None if i.dtype.is_floating_point else _gathered_rows(graph, i.name, initializers)
        )
        for i in specs
    ]
    specs = [_bind_given(i, given, batch_dims, dims, where) for i in specs]
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
        example_inputs=_make_inputs(specs, batch_dims, dims, where),
        explain_failure=_explainer(resolved, specs),
        default_batch_sizes=(1, 8),
        num_classes=num_classes,
        tags=frozenset(tags),
        input_names=input_names,
        image_size=sizes[2] if "vision" in tags else None,
        batch_sizes=tuple(sorted(fixed_batch)) if fixed_batch and not batch_dims else None,
    )
    return spec, set(open_dims)

"""What feeds an --onnx graph (models/onnx_file.py reads the graph): what the user gives and what the suite generates.

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

from nn_speedups.models.user import UserModelError, cause


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
class GraphInput:
    """One input of the graph as declared, with what feeds it: the user's array or value, else generated."""

    name: str
    dtype: torch.dtype
    shape: tuple  # ints and dim symbols
    rows: int | None = None  # an embedding table's row count, for ids
    given: np.ndarray | None = None  # an --onnx-inputs array (as saved)
    value: np.ndarray | None = None  # an --onnx-input value (filled to the shape)
    source: str = ""


def integer_scalar(i: GraphInput) -> bool:
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


def make_inputs(specs: list[GraphInput], batch_dims: set[str], dims: dict[str, int], where: str):
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


def bind_given(i: GraphInput, given: OnnxInputs, batch_dims: set[str], dims: dict[str, int], where: str) -> GraphInput:
    """The input with what the user gave for it, checked against its declared shape; an array's sizes for open
    non-batch dims go into `dims` (a clash with --onnx-dim or another array is an error)."""
    if i.name in given.arrays:
        source = given.sources[i.name]
        array = _as_type(given.arrays[i.name], i.dtype, f"{where}: {source}: input {i.name!r}")
        if array.ndim != len(i.shape):
            raise UserModelError(
                f"{where}: {source}: input {i.name!r} has {array.ndim} dims, the graph declares {len(i.shape)} "
                f"({shape_text(i.shape)})"
            )
        for axis, (d, n) in enumerate(zip(i.shape, array.shape)):
            if isinstance(d, int) and d != n:
                raise UserModelError(
                    f"{where}: {source}: input {i.name!r} is {tuple(array.shape)}, the graph declares "
                    f"{shape_text(i.shape)} (dim {axis} must be {d})"
                )
            if isinstance(d, str) and d not in batch_dims:
                if dims.setdefault(d, n) != n:
                    raise UserModelError(
                        f"{where}: {source}: input {i.name!r} sets dim {d} to {n}, but it is {dims[d]} elsewhere "
                        "(--onnx-dim or another input)"
                    )
        given.used.add(i.name)
        return GraphInput(i.name, i.dtype, i.shape, i.rows, given=array, source=source)
    if i.name in given.values:
        source = given.sources[i.name]
        value = _as_type(given.values[i.name], i.dtype, f"{where}: {source}")
        given.used.add(i.name)
        if value.size == 1:
            return GraphInput(i.name, i.dtype, i.shape, i.rows, value=value.reshape(()), source=source)
        tail = i.shape[-1] if i.shape else None
        if tail is None or (isinstance(tail, int) and tail != value.size):
            raise UserModelError(
                f"{where}: {source}: {value.size} values for input {i.name!r} of shape {shape_text(i.shape)}: give "
                f"one value, or as many as its last dim{f' ({tail})' if tail else ''}; "
                "larger arrays go in --onnx-inputs"
            )
        if isinstance(tail, str) and dims.setdefault(tail, value.size) != value.size:
            raise UserModelError(f"{where}: {source}: {value.size} values, but dim {tail} is {dims[tail]}")
        return GraphInput(i.name, i.dtype, i.shape, i.rows, value=value, source=source)
    return i


def describe(i: GraphInput) -> str:
    kind = str(i.dtype).removeprefix("torch.")
    if i.dtype.is_floating_point:
        return f"{kind} {shape_text(i.shape)} of standard normal values"
    if i.rows is not None:
        return f"{kind} ids below {i.rows}"
    if i.dtype == torch.bool:
        return f"bool {shape_text(i.shape)}, all true"
    lower = i.name.lower()
    if "mask" in lower:
        return f"{kind} {shape_text(i.shape)}, an attention mask of random lengths"
    if "position" in lower:
        return f"{kind} {shape_text(i.shape)}, positions counting up"
    return f"{kind} {shape_text(i.shape)}, zeros"


def shape_text(shape: tuple) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"

"""Your own model as a ModelSpec, so that every bench family runs on it through the same path as the built-in ones.

Three ways in, all from the command line (nn_speedups/plugin/__init__.py turns them into registered specs before
collection):

- `--model [NAME=]module.path:factory` (or `path/to/file.py:factory`): `factory()` returns `(model, example_inputs)`
  or a `ModelSpec`. From a pair the spec is inferred: the name from NAME, else the factory (`make_foo` -> `foo`), else
  the module; tags from the inputs and the model (one float [B, 3, H, H] input: `vision`; 4-D float inputs and a
  Conv2d: `conv`; integer inputs of rank >= 2: `nlp`); `num_classes` from [B, K] logits of a last nn.Linear with K
  outputs. Inputs for other batch sizes repeat the example's rows (seed 0, what checks and timings use); other seeds
  (INT8 calibration) draw new floats at the example's mean and spread, and new integers in its range
  (models/user_inputs.py, with the example images at an explicit --image-size).
- `--model hf:PATH`: a local Hugging Face folder (models/hf_folder.py).
- `--onnx [NAME=]PATH`: an ONNX file (models/onnx_file.py), its ONNX Runtime fp32 run as the baseline.

A model whose example is a dict, or whose output is not a tensor (a Hugging Face ModelOutput, a tuple, a dict), runs
inside `UserModel`, which takes positional inputs and returns the first tensor of the output: what checks compare.
Errors are `UserModelError`s of one line that name the entry and the cause.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from nn_speedups.core.errors import one_line
from nn_speedups.models.registry import REGISTRY, ModelSpec
from nn_speedups.models.user_inputs import RESIZED, at_image_size, batch_like, resized_from  # noqa: F401 - from here too

USER_TAG = "user"
GENERIC_NAMES = {"", "model", "net", "network", "factory", "make", "build", "create", "get", "main", "spec"}
_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


class UserModelError(ValueError):
    """A model given on the command line that cannot be used: one line naming the entry and the cause."""


def clean_name(text: str) -> str:
    """A name test ids can hold: letters, digits, '-', '_', '.'."""
    return _NAME.sub("-", text).strip("-.")


def first_tensor(output: object) -> torch.Tensor | None:
    """The first tensor in a model's output: itself, or the first of a tuple/list/dict/ModelOutput (depth first)."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for value in values:
        found = first_tensor(value)
        if found is not None:
            return found
    return None


class UserModel(nn.Module):
    """A user's model as the harness runs it: positional tensor inputs in (passed on by keyword when the example was
    a dict), the first tensor of its output out. Its state dict loads into the wrapped model as the user saved it."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...] | None) -> None:
        super().__init__()
        self.model = model
        self.keys = keys

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        output = self.model(**dict(zip(self.keys, inputs))) if self.keys else self.model(*inputs)
        return first_tensor(output)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)


def user_model_class(input_names: Sequence[str]) -> type[UserModel]:
    """UserModel with a forward whose signature names the inputs: torch.export matches dynamic shapes to it."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return UserModel.forward(self, *inputs)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("self", kind)] + [inspect.Parameter(n, kind) for n in input_names]
    forward.__signature__ = inspect.Signature(params)
    return type("UserModel", (UserModel,), {"forward": forward, "__module__": __name__})


# ------------------------------------------------------------------------------------------ factory -> ModelSpec


def _as_inputs(example: object) -> tuple[tuple[torch.Tensor, ...], tuple[str, ...] | None]:
    """(tensors, keys): a tensor, a tuple/list of tensors, or a dict of tensors (keys: its names, in order)."""
    keys = None
    if isinstance(example, torch.Tensor):
        example = (example,)
    elif isinstance(example, dict):
        keys = tuple(str(k) for k in example)
        example = tuple(example.values())
    if not isinstance(example, (tuple, list)) or not example or not all(isinstance(x, torch.Tensor) for x in example):
        raise TypeError(
            f"example_inputs is {_describe(example)}: give a tensor, a tuple of tensors or a dict of tensors"
        )
    tensors = tuple(x.detach() for x in example)
    if any(x.dim() == 0 for x in tensors) or len({x.shape[0] for x in tensors}) != 1:
        shapes = ", ".join(str(tuple(x.shape)) for x in tensors)
        raise TypeError(f"example inputs must share a first (batch) dimension: shapes {shapes}")
    return tensors, keys


def _describe(value: object) -> str:
    kind = type(value).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    if isinstance(value, (tuple, list)):
        return f"{article} {kind} of {', '.join(type(v).__name__ for v in value) or 'nothing'}"
    return f"{article} {kind}"


def cause(error: BaseException, limit: int = 300) -> str:
    """An exception as one short line: its type and the first line of its message (core.errors.one_line)."""
    return one_line(error, limit)


def _forward_names(model: nn.Module, count: int) -> tuple[str, ...]:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        params = []
    named = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:count]
    if count == 1 and not named:
        return ("input",)
    return tuple(named + [f"input_{i}" for i in range(len(named), count)])


def _classes(model: nn.Module, output: torch.Tensor) -> int | None:
    """K for [B, K] logits produced by a last nn.Linear with K outputs (a classifier head)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if output.dim() == 2 and output.shape[1] > 1 and linears and linears[-1].out_features == output.shape[1]:
        return int(output.shape[1])
    return None


def infer_tags(model: nn.Module, inputs: Sequence[torch.Tensor]) -> set[str]:
    tags = set()
    x = inputs[0]
    if len(inputs) == 1 and x.is_floating_point() and x.dim() == 4 and x.shape[1] == 3 and x.shape[2] == x.shape[3]:
        tags.add("vision")
    if any(t.is_floating_point() and t.dim() == 4 for t in inputs) and any(
        isinstance(m, nn.Conv2d) for m in model.modules()
    ):
        tags.add("conv")
    if any(not t.is_floating_point() and t.dtype != torch.bool and t.dim() >= 2 for t in inputs):
        tags.add("nlp")
    return tags


def spec_from_example(
    name: str, make: Callable[[], nn.Module], model: nn.Module, example: object, where: str = ""
) -> ModelSpec:
    """A ModelSpec for `model` fed `example` (a tensor, a tuple or a dict of tensors); `make()` builds a fresh model
    for each baseline. Runs the model once on the example (CPU, inference mode) to check that they fit and to learn
    its output: raises UserModelError naming `where` when they do not."""
    where = where or name
    try:
        inputs, keys = _as_inputs(example)
    except TypeError as error:
        raise UserModelError(f"{where}: {error}") from None
    if not isinstance(model, nn.Module):
        raise UserModelError(f"{where}: the model is {_describe(model)}, not a torch.nn.Module")
    model.eval()
    try:
        with torch.inference_mode():
            output = model(**dict(zip(keys, inputs))) if keys else model(*inputs)
    except Exception as error:  # noqa: BLE001 - user code: whatever it raises means "this model does not run"
        raise UserModelError(f"{where}: the model fails on its example inputs: {cause(error)}") from None
    tensor = first_tensor(output)
    if tensor is None:
        raise UserModelError(f"{where}: the model's output ({_describe(output)}) holds no tensor to compare")
    input_names = keys or _forward_names(model, len(inputs))
    wrap = keys is not None or not isinstance(output, torch.Tensor)
    wrapper = user_model_class(input_names) if wrap else None
    tags = infer_tags(model, inputs)
    vision = "vision" in tags

    def build(image_size: int | None = None) -> nn.Module:
        fresh = make()
        return wrapper(fresh, keys) if wrapper is not None else fresh

    return ModelSpec(
        name=name,
        build=build,
        example_inputs=batch_like(inputs),
        default_batch_sizes=(1, 8),
        num_classes=_classes(model, tensor),
        tags=frozenset(tags | {USER_TAG}),
        input_names=input_names,
        image_size=int(inputs[0].shape[-1]) if vision else None,
    )


_HF_ENTRY = re.compile(r"(?:(?P<name>[A-Za-z0-9_.-]+)=)?hf:(?P<path>.+)")
_ENTRY = re.compile(r"(?:(?P<name>[A-Za-z0-9_.-]+)=)?(?P<module>[^=]+):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")


def _import(module: str, entry: str):
    try:
        if module.endswith(".py"):
            path = Path(module).expanduser().resolve()
            if not path.is_file():
                raise UserModelError(f"{entry}: no such file {path}")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            loaded = importlib.util.module_from_spec(spec)
            sys.modules.setdefault(path.stem, loaded)
            spec.loader.exec_module(loaded)
            return loaded
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as error:
            here = os.getcwd()
            if error.name is None or not module.startswith(error.name) or here in sys.path:
                raise
            sys.path.insert(0, here)  # `pytest` (unlike `python -m pytest`) leaves the project folder off sys.path
            return importlib.import_module(module)
    except UserModelError:
        raise
    except Exception as error:  # noqa: BLE001 - importing user code may raise anything
        raise UserModelError(f"{entry}: cannot import {module}: {cause(error)}") from None


def _factory_name(module: str, attr: str) -> str:
    base = attr.rsplit(".", 1)[-1]
    for prefix in ("make_", "build_", "create_", "get_", "load_"):
        base = base.removeprefix(prefix)
    if base.lower() in GENERIC_NAMES:
        base = Path(module).stem if module.endswith(".py") else module.rsplit(".", 1)[-1]
    return clean_name(base)


def factory_spec(entry: str) -> ModelSpec:
    """The spec of `--model [NAME=]module.path:factory` (or file.py:factory)."""
    where = f"--model {entry}"
    match = _ENTRY.fullmatch(entry.strip())
    if not match:
        raise UserModelError(f"{where}: give module.path:factory, path/to/file.py:factory or hf:PATH")
    module_name, attr = match["module"], match["attr"]
    target = _import(module_name, where)
    try:
        factory = target
        for part in attr.split("."):
            factory = getattr(factory, part)
    except AttributeError:
        raise UserModelError(f"{where}: {module_name} has no attribute {attr!r}") from None
    if not callable(factory):
        raise UserModelError(f"{where}: {module_name}.{attr} is {_describe(factory)}, not a callable factory")

    def call():
        torch.manual_seed(0)
        try:
            return factory()
        except Exception as error:  # noqa: BLE001 - user code
            raise UserModelError(f"{where}: the factory raised {cause(error)}") from None

    result = call()
    if isinstance(result, ModelSpec):
        if not (isinstance(result.name, str) and result.name and clean_name(result.name) == result.name):
            raise UserModelError(f"{where}: ModelSpec name {result.name!r}: use letters, digits, '-', '_', '.'")
        if not callable(result.build) or not callable(result.example_inputs):
            raise UserModelError(f"{where}: the ModelSpec's build and example_inputs must be callables")
        return replace(result, name=match["name"] or result.name, tags=frozenset(result.tags | {USER_TAG}))
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise UserModelError(
            f"{where}: the factory returned {_describe(result)}; return (model, example_inputs) or a ModelSpec"
        )
    model, example = result

    def make() -> nn.Module:
        fresh = call()
        return fresh[0] if isinstance(fresh, (tuple, list)) else fresh

    name = match["name"] or _factory_name(module_name, attr)
    return spec_from_example(name, make, model, example, where)


# ------------------------------------------------------------------------------------------ the command line


def parse_dims(values: Sequence[str]) -> dict[str, int]:
    """--onnx-dim NAME=SIZE values -> {NAME: SIZE}."""
    dims = {}
    for value in values:
        name, _, size = value.partition("=")
        if not name or not size.isdigit() or int(size) < 1:
            raise UserModelError(f"--onnx-dim {value!r}: give NAME=SIZE with a positive size, e.g. seq=128")
        dims[name.strip()] = int(size)
    return dims


def load_user_specs(
    models: Sequence[str] = (),
    onnx_files: Sequence[str] = (),
    onnx_dims: Sequence[str] = (),
    seq_len: int | None = None,
    onnx_input_files: Sequence[str] = (),
    onnx_input_values: Sequence[str] = (),
) -> list[ModelSpec]:
    """The specs of `--model` entries (module:factory, file.py:factory, hf:PATH) and `--onnx` files, in order;
    `onnx_input_files` (--onnx-inputs FILE.npz) and `onnx_input_values` (--onnx-input NAME=VALUE) feed the files'
    inputs (models/onnx_file.py)."""
    from nn_speedups.models import hf_folder, onnx_file

    if seq_len is not None and seq_len < 1:
        raise UserModelError(f"--seq-len {seq_len}: give a positive length")
    entries = list(models)
    specs = []
    for entry in models:
        hf = _HF_ENTRY.fullmatch(entry.strip())
        if hf:
            spec = hf_folder.hf_spec(hf["path"], seq_len)
            specs.append(replace(spec, name=hf["name"]) if hf["name"] else spec)
        else:
            specs.append(factory_spec(entry))
    dims = parse_dims(onnx_dims)
    if dims and not onnx_files:
        raise UserModelError("--onnx-dim sizes the open dims of an ONNX file: give the file with --onnx PATH")
    given = onnx_file.parse_inputs(list(onnx_input_files), list(onnx_input_values))
    if (given.arrays or given.values) and not onnx_files:
        option = "--onnx-inputs" if given.arrays else "--onnx-input"
        raise UserModelError(f"{option} feeds the inputs of an ONNX file: give the file with --onnx PATH")
    used: set[str] = set()
    inputs_seen: set[str] = set()
    for entry in onnx_files:
        spec, open_dims = onnx_file.onnx_spec(entry, dims, given)
        inputs_seen |= set(spec.input_names)
        specs.append(spec)
        entries.append(entry)
        used |= open_dims
    stray = sorted((set(given.arrays) | set(given.values)) - given.used)
    if stray:
        raise UserModelError(
            f"{given.sources[stray[0]]}: no input of {', '.join(onnx_files)} is named {stray[0]!r} "
            f"(inputs: {', '.join(sorted(inputs_seen))})"
        )
    unused = sorted(set(dims) - used)
    if unused:
        raise UserModelError(
            f"--onnx-dim {unused[0]}: no input of {', '.join(onnx_files)} has an open dim named {unused[0]!r} "
            f"(open dims: {', '.join(sorted(used)) or 'none'})"
        )
    seen: dict[str, str] = {}
    for spec, entry in zip(specs, entries):
        if spec.name in seen:
            raise UserModelError(
                f"{seen[spec.name]} and {entry} are both named {spec.name!r}: name one, e.g. other={entry}"
            )
        seen[spec.name] = entry
        if entry in models:  # a factory or a Hugging Face folder: a fresh process can load it again
            SOURCES[spec.name] = {"entry": entry, "seq_len": seq_len, "cwd": os.getcwd()}
    return specs


# name -> how a fresh process (a rank of the distributed family) loads the same model again
SOURCES: dict[str, dict] = {}


def source_of(spec: ModelSpec) -> dict | None:
    """What `reload` needs to rebuild a user's model in another process, or None (built-in models, ONNX files)."""
    return SOURCES.get(spec.name) if is_user(spec) else None


def reload(source: dict) -> ModelSpec:
    """Register again, in this process, the user model `source_of` described: from the folder it was named in, so
    that module paths and relative file paths mean what they meant on the command line."""
    here = os.getcwd()
    os.chdir(source["cwd"])
    try:
        (spec,) = load_user_specs([source["entry"]], seq_len=source["seq_len"])
        if source.get("image_size"):  # the run's --image-size, where it resized the model's example images
            spec, _ = at_image_size(spec, source["image_size"])
    finally:
        os.chdir(here)
    return register_user(spec)


def register_user(spec: ModelSpec) -> ModelSpec:
    """Register a user's spec; a name taken by a built-in model is an error, a user's own from an earlier session in
    this process is replaced."""
    known = REGISTRY.get(spec.name)
    if known is not None and USER_TAG not in known.tags:
        raise UserModelError(
            f"model name {spec.name!r} is a built-in model's: name yours, e.g. --model my-{spec.name}=module:factory"
        )
    REGISTRY[spec.name] = spec
    return spec


def is_user(spec: ModelSpec) -> bool:
    return USER_TAG in spec.tags

"""ONNX export (torch.onnx.export with dynamo=True) with a dynamic batch, external-data weights, onnx.checker,
and a cache under artifacts/ keyed by model, configuration, weights and torch version.

A cached artifact carries a manifest with the sha256 of every file; a file that no longer matches (corrupt,
truncated, edited) is detected and the artifact rebuilt. Model size = graph file + external data, on disk.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from nn_speedups.core.errors import one_line

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ExportConfig:
    name: str  # model name, e.g. "resnet50"
    dtype: str = "fp32"  # "fp32" | "fp16": the fp16 export converts weights and inputs with .half()
    dynamic_batch: bool = True
    training: bool = False  # export the training-mode graph (for looking at, as seed 000 did)
    opset: int | None = None
    input_names: tuple[str, ...] | None = None  # default: input, or input_0, input_1, ...
    cache_dir: str = "artifacts/onnx"


@dataclass(frozen=True)
class OnnxArtifact:
    path: Path  # the .onnx graph
    files: tuple[Path, ...]  # graph + external data: what model size counts
    sha256: str  # over every file, in order
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    cached: bool  # True when read from the cache instead of exported now

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


class ExportError(RuntimeError):
    """The exporter failed; the message carries the exporter's own words, in short."""


def sha256_files(paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def weights_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_key(model: nn.Module, example_inputs: tuple, config: ExportConfig) -> str:
    shapes = [list(x.shape[1:]) + [str(x.dtype)] for x in example_inputs]  # batch is dynamic
    fields = {**asdict(config), "cache_dir": None, "torch": torch.__version__, "weights": weights_digest(model)}
    fields["inputs"] = shapes
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def _names(example_inputs: tuple) -> tuple[str, ...]:
    return ("input",) if len(example_inputs) == 1 else tuple(f"input_{i}" for i in range(len(example_inputs)))


def _export_batch(example_inputs: tuple) -> tuple:
    """A dynamic dimension needs an example of size >= 2: repeat a batch of 1."""
    return tuple(x.repeat(2, *([1] * (x.dim() - 1))) if x.shape[0] == 1 else x for x in example_inputs)


def _load_cached(folder: Path) -> OnnxArtifact | None:
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        files = tuple(folder / f for f in manifest["files"])
        if not all(f.is_file() for f in files) or sha256_files(files) != manifest["sha256"]:
            return None
    except (OSError, ValueError, KeyError):
        return None
    return OnnxArtifact(
        path=files[0],
        files=files,
        sha256=manifest["sha256"],
        input_names=tuple(manifest["input_names"]),
        output_names=tuple(manifest["output_names"]),
        cached=True,
    )


def export(model: nn.Module, example_inputs: tuple, config: ExportConfig) -> OnnxArtifact:
    """Export `model` (CPU copy) to ONNX, or return the verified cached artifact of the same key."""
    import onnx

    as_file = getattr(model, "onnx_artifact", None)
    if as_file is not None:  # a model given as an ONNX file (--onnx, models/onnx_file.py): the file is its export
        return as_file(config)
    key = cache_key(model, example_inputs, config)
    folder = Path(config.cache_dir) / f"{config.name}-{config.dtype}{'-train' if config.training else ''}-{key}"
    cached = _load_cached(folder)
    if cached is not None:
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        stale.unlink()

    export_model = copy.deepcopy(model).cpu()
    export_model.train(config.training)
    inputs = tuple(x.detach().cpu() for x in _export_batch(example_inputs))
    if config.dtype == "fp16":
        export_model = export_model.half()
        inputs = tuple(x.half() if x.is_floating_point() else x for x in inputs)
    elif config.dtype != "fp32":
        raise ValueError(f"ExportConfig.dtype {config.dtype!r}: valid: fp32, fp16")
    input_names = config.input_names or _names(inputs)
    dynamic_shapes = (
        tuple({0: torch.export.Dim("batch", min=1, max=4096)} for _ in inputs) if config.dynamic_batch else None
    )
    path = folder / "model.onnx"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                export_model,
                inputs,
                str(path),
                dynamo=True,
                external_data=True,
                dynamic_shapes=dynamic_shapes,
                input_names=list(input_names),
                output_names=["output"],
                opset_version=config.opset,
                custom_translation_table=custom_op_translations(),
            )
    except Exception as error:  # noqa: BLE001 - the exporter raises many kinds; all mean "this model did not export"
        # the exporter's own words, in short: the first line of each error of the cause chain, innermost first
        why = one_line(error, limit=600, chain=4)
        raise ExportError(f"ONNX export of {config.name} ({config.dtype}) failed: {why}") from None
    onnx.checker.check_model(str(path))  # by path, so the external data is checked too
    graph = onnx.load(str(path), load_external_data=False)
    output_names = tuple(o.name for o in graph.graph.output)
    files = (path,) + tuple(sorted(p for p in folder.iterdir() if p.name not in ("model.onnx", MANIFEST)))
    manifest = {
        "files": [f.name for f in files],
        "sha256": sha256_files(files),
        "input_names": list(input_names),
        "output_names": list(output_names),
        "config": asdict(config),
        "torch": torch.__version__,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return OnnxArtifact(path, files, manifest["sha256"], input_names, output_names, cached=False)


def custom_op_translations() -> dict:
    """ONNX translations of the suite's own torch.library ops (FastSwish's Triton op decomposes to standard ops)."""
    from nn_speedups.kernels.fastswish_triton import onnx_translation_table

    return dict(onnx_translation_table())


def op_counts(path: str | Path) -> dict[str, int]:
    """How many nodes of each ONNX op type the graph holds (functions' bodies included), most frequent first."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts: Counter[str] = Counter(node.op_type for node in model.graph.node)
    for function in model.functions:
        counts.update(node.op_type for node in function.node)
    return dict(counts.most_common())

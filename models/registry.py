"""The model registry: name -> ModelSpec. Each models/ file registers its own specs on import."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

WEIGHTS_SEED = 0  # build_model seeds torch with it before building any model: the same random weights every run


@dataclass(frozen=True)
class ModelSpec:
    """How the suite builds and feeds a model: the one way in for the built-in models and for your own (a factory
    given with `--model module.path:factory` may return one; docs/own-model.md).

    name: the id in test ids and reports (unique; letters, digits, `-`, `_`, `.`).
    build(image_size=..., [activation=NAME]): a fresh model, fp32, on the CPU; the harness seeds torch first, then
        moves it to the device and calls .eval(). Its forward takes the example inputs positionally and returns a
        tensor (or a tuple of tensors).
    example_inputs(batch_size, image_size, device, seed): the model's positional inputs for one batch; seed 0 is what
        checks and timings run on, other seeds are INT8 calibration batches.
    num_classes: classifiers with [batch, num_classes] logits (accuracy columns; training benches with `vision`).
    tags: `vision` (one float [B, 3, H, H] image input: --data images for calibration and accuracy), `conv`
        (convolutions on 4-D inputs: channels-last variants), `nlp` (integer token inputs: the transformer INT8
        recipes), `activation-slot` (build accepts activation=NAME of nn_speedups.models.activations.ACTIVATIONS); the
        suite adds `user`, `hf` and `onnx-file` to models given on the command line.
    input_names: the inputs' names in ONNX graphs and engines.
    image_size: the input size of a model whose inputs do not follow --image-size (None: they do).
    batch_sizes: the only batch sizes the model can run (None: any), e.g. an ONNX graph with a static batch.
    explain_failure(engine message) -> a clause naming what of the model most likely caused an engine's failure
        (an ONNX file: the generated input the failing node reads), or "".
    """

    name: str
    build: Callable[..., nn.Module]  # build(image_size=..., activation=...) -> nn.Module in eval mode, fp32, CPU
    example_inputs: Callable[..., tuple[torch.Tensor, ...]]  # (batch_size, image_size, device, seed) -> inputs
    default_batch_sizes: tuple[int, ...] = (1, 64)
    num_classes: int | None = None  # classifiers only
    tags: frozenset[str] = field(default_factory=frozenset)  # vision, conv, nlp, activation-slot, torchvision
    pretrained: Callable[[], dict] | None = None  # loads pretrained weights from the local cache only
    input_names: tuple[str, ...] = ("input",)  # names of the inputs, for ONNX graphs and engines
    image_size: int | None = None  # a fixed input size that --image-size does not change
    batch_sizes: tuple[int, ...] | None = None  # the only batch sizes it runs (None: any)
    explain_failure: Callable[[str], str] | None = None

    @property
    def is_conv(self) -> bool:
        return "conv" in self.tags


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(REGISTRY))}") from None


def image_inputs(batch_size: int, image_size: int = 224, device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(device),)


def build_model(
    spec: ModelSpec, image_size: int, activation: str | None = None, weights: str | None = None
) -> nn.Module:
    """Build `spec` in eval mode with seeded random weights (`weights` None or "random"), or load `weights`:
    "pretrained" (torchvision's, from the local cache only) or a state-dict / training-checkpoint path."""
    torch.manual_seed(WEIGHTS_SEED)
    kwargs = {"image_size": image_size}
    if activation is not None:
        if "activation-slot" not in spec.tags:
            raise ValueError(f"model {spec.name!r} has no activation slot")
        kwargs["activation"] = activation
    model = spec.build(**kwargs)
    if weights in (None, "", "random"):
        pass  # the seeded random weights above
    elif weights == "pretrained":
        if spec.pretrained is None:
            raise ValueError(f"model {spec.name!r} has no pretrained weights; pass --weights PATH to a state dict")
        model.load_state_dict(spec.pretrained())
    elif weights:
        state = load_state(weights)
        head = _head_name(model)
        if head is not None and f"{head}.weight" in state:
            set_num_classes(model, state[f"{head}.weight"].shape[0])  # a checkpoint trained on another label set
        model.load_state_dict(state)
    return model.eval()


def load_state(path: str | Path) -> dict:
    """The state dict in `path`: a plain one, or a nn_speedups.train checkpoint holding it under "model"."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file (expected a state dict saved with torch.save)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a training checkpoint
    return state


def _head_name(model: nn.Module) -> str | None:
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


def set_num_classes(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the model's last nn.Linear (its classifier head) by a fresh one with `num_classes` outputs.

    Works for convnext-seed and resnet (model.fc), densenet (model.classifier), mobilenet_v3 and convnext_tiny
    (model.classifier[-1]). A head that already has `num_classes` outputs is left untouched. Returns the model.
    """
    name = _head_name(model)
    if name is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head to resize")
    head = model.get_submodule(name)
    if head.out_features == num_classes:
        return model
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    new_head = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    setattr(parent, child_name, new_head.to(device=head.weight.device, dtype=head.weight.dtype))
    return model


def count_parameters(model: nn.Module) -> int:
    """Parameters of `model`; a module that runs outside PyTorch (an ONNX file's session) says its own count."""
    counted = getattr(model, "parameter_count", None)
    return counted if counted is not None else sum(p.numel() for p in model.parameters())

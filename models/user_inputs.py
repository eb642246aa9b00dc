"""A user's model's inputs beyond its one example (models/user.py loads the model): the batches of a spec inferred
from a (model, example) pair (`batch_like`), and its example images at an explicit --image-size (`at_image_size`,
`resized_from`).

Inputs for other batch sizes repeat the example's rows (seed 0, what checks and timings use); other seeds (INT8
calibration) draw new floats at the example's mean and spread, and new integers in its range.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from nn_speedups.models.registry import ModelSpec


def batch_like(example: Sequence[torch.Tensor]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """example_inputs(batch_size, image_size, device, seed) built from one example batch (see the module's doc)."""
    example = tuple(x.cpu() for x in example)
    rows = example[0].shape[0]

    def inputs(batch_size: int, image_size: int = 0, device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor, ...]:
        index = (torch.arange(batch_size) + seed) % rows
        if seed == 0:
            return tuple(x[index].to(device) for x in example)
        generator = torch.Generator().manual_seed(seed)
        out = []
        for x in example:
            picked = x[index]
            if x.is_floating_point():
                spread = x.float().std().item() if x.numel() > 1 else 1.0
                noise = torch.randn(picked.shape, generator=generator) * (spread or 1.0) + x.float().mean()
                out.append(noise.to(x.dtype))
            elif x.dtype == torch.bool or (x.min() >= 0 and x.max() <= 1):
                out.append(picked)  # masks and flags keep the example's structure
            else:
                low, high = int(x.min()), int(x.max()) + 1
                out.append(torch.randint(low, high, picked.shape, generator=generator, dtype=x.dtype))
        return tuple(t.to(device) for t in out)

    return inputs


# name -> (the example's height, width; the resized inputs) of a user's model run at --image-size (at_image_size)
RESIZED: dict[str, tuple[int, int, Callable]] = {}


def _image_example(spec: ModelSpec, image_size: int) -> torch.Tensor | None:
    """The spec's example batch (of one) asked for at `image_size`, when it is one float 4-D NCHW image tensor."""
    if "onnx-file" in spec.tags:
        return None  # an ONNX file's graph fixes its input shapes
    try:
        example = spec.example_inputs(1, image_size, "cpu", 0)
    except Exception:  # noqa: BLE001 - user code; a model whose inputs cannot be asked for a size keeps its own
        return None
    if isinstance(example, torch.Tensor):
        example = (example,)
    if not (isinstance(example, (tuple, list)) and len(example) == 1 and isinstance(example[0], torch.Tensor)):
        return None
    image = example[0]
    return image if image.is_floating_point() and image.dim() == 4 else None


def _resized_inputs(example_inputs: Callable[..., tuple], size: int) -> Callable[..., tuple[torch.Tensor]]:
    """example_inputs at size x size: the model's own images (its example's rows, or its calibration seeds'),
    resized bilinearly (antialiased when shrinking) where they come at another size."""
    from torch.nn import functional as F

    def inputs(batch_size: int, image_size: int = size, device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor]:
        images = example_inputs(batch_size, size, "cpu", seed)
        x = images if isinstance(images, torch.Tensor) else images[0]
        if tuple(x.shape[-2:]) != (size, size):
            resized = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            x = resized.to(x.dtype)
        return (x.to(device),)

    return inputs


def at_image_size(spec: ModelSpec, image_size: int) -> tuple[ModelSpec, str]:
    """A user's model run at an explicit --image-size: (the spec to run, what the run header says of its inputs).

    One float 4-D NCHW image input at another size (the example's): a spec whose inputs are those images resized to
    image_size x image_size, its `image_size` that size (whether the model takes it, the baseline's forward tells:
    nn_speedups.measure.protocol fails the case in one line naming both sizes). Inputs that already follow the size: the
    spec as it is. Anything else (token ids, several inputs, an ONNX file's fixed graph): the spec as it is, at its own
    inputs.
    """
    from nn_speedups.models.user import SOURCES  # here, not at the top: models/user.py imports this module

    image = _image_example(spec, image_size)
    if image is None:
        return spec, f"{spec.name}: its own inputs (--image-size does not apply)"
    height, width = (int(n) for n in image.shape[-2:])
    if (height, width) == (image_size, image_size):
        return spec, f"{spec.name} {image_size}x{image_size}"
    inputs = _resized_inputs(spec.example_inputs, image_size)
    RESIZED[spec.name] = (height, width, inputs)
    if spec.name in SOURCES:  # the distributed family's ranks load the model again: at this size too
        SOURCES[spec.name]["image_size"] = image_size
    resized = replace(spec, example_inputs=inputs, image_size=image_size)
    return resized, f"{spec.name} {image_size}x{image_size} (--image-size; its example is {height}x{width})"


def resized_from(spec: ModelSpec) -> tuple[int, int] | None:
    """The example's (height, width) of a user's model that at_image_size set to another size, else None."""
    height, width, inputs = RESIZED.get(spec.name, (0, 0, None))
    return (height, width) if inputs is not None and spec.example_inputs is inputs else None

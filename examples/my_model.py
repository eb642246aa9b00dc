"""A model module as a team keeps it in its own repository, and the two ways to hand it to nn-speedups.

`make_model()` returns the model and one example batch; the suite infers the rest (name `my_model`, tags vision and
conv from the [B, 3, 32, 32] float input and the convolutions, 10 classes from the logits):

    pytest --pyargs nn_speedups.benches.test_inference nn_speedups.benches.test_onnxruntime --model my_model:make_model

`make_spec()` says it all itself with a ModelSpec, the same record the built-in models use:

    pytest --pyargs nn_speedups.benches.test_inference --model my_model:make_spec
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_SIZE = 32
NUM_CLASSES = 10


class SmallNet(nn.Module):
    """Two conv blocks and a linear head: [B, 3, 32, 32] images -> [B, 10] logits."""

    def __init__(self, activation: str = "relu") -> None:
        super().__init__()
        act = {"relu": nn.ReLU, "gelu": nn.GELU, "hardswish": nn.Hardswish}.get(activation)
        if act is None:
            # every activation the suite knows, fastswish included
            from nn_speedups.models.activations import make_activation

            def act():
                return make_activation(activation)

        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), act(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), act(), nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.head = nn.Linear(32, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).flatten(1))


def make_model():
    """The short way: (model, example_inputs). Load your trained weights here (model.load_state_dict(...))."""
    return SmallNet().eval(), torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)


def make_spec():
    """The explicit way: a ModelSpec, with an activation slot the activation benches can swap."""
    from nn_speedups import ModelSpec

    def images(batch_size: int, image_size: int = IMAGE_SIZE, device: str = "cpu", seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        return (torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(device),)

    return ModelSpec(
        name="smallnet",
        build=lambda image_size=IMAGE_SIZE, activation="relu": SmallNet(activation),
        example_inputs=images,
        default_batch_sizes=(1, 8),
        num_classes=NUM_CLASSES,
        tags=frozenset({"vision", "conv", "activation-slot"}),
        input_names=("images",),
        image_size=IMAGE_SIZE,
    )

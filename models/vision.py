"""torchvision classifiers. Random weights by default; pretrained weights only from the local torch hub cache."""

from __future__ import annotations

import os

import torch
import torchvision

from nn_speedups.models.registry import ModelSpec, image_inputs, register


def _cached_pretrained(arch: str):
    def load() -> dict:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"pretrained weights for {arch} are not in the local torch hub cache ({path}); this suite never "
                f"downloads: copy the file there, or pass --weights PATH to a state dict"
            )
        return torch.load(path, map_location="cpu", weights_only=True)

    return load


def _torchvision(arch: str, conv: bool = True) -> ModelSpec:
    return ModelSpec(
        name=arch,
        build=lambda image_size=224: torchvision.models.get_model(arch, weights=None),
        example_inputs=image_inputs,
        default_batch_sizes=(1, 64),
        num_classes=1000,
        tags=frozenset({"vision", "torchvision"} | ({"conv"} if conv else set())),
        pretrained=_cached_pretrained(arch),
    )


for _arch in ("resnet18", "resnet50", "densenet121", "mobilenet_v3_large", "shufflenet_v2_x1_0", "convnext_tiny"):
    register(_torchvision(_arch))

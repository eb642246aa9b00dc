"""Image transforms: the seed's training and validation pipelines (resize, crop, flip) and ImageNet normalization."""

from __future__ import annotations

import torch
from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_for(image_size: int) -> int:
    """The short side to resize to before cropping `image_size`: 256 for 224, scaled alike for other sizes."""
    return round(image_size * 256 / 224)


def _normalize() -> transforms.Normalize:
    return transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)


def train_transform(image_size: int = 224) -> transforms.Compose:
    """The seed's training pipeline: bicubic resize (64 -> 256), random crop 224, horizontal flip, normalize."""
    return transforms.Compose(
        [
            transforms.Resize(resize_for(image_size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            _normalize(),
        ]
    )


def eval_transform(image_size: int = 224) -> transforms.Compose:
    """The seed's validation pipeline: bicubic resize to 256, centre crop 224, normalize."""
    return transforms.Compose(
        [
            transforms.Resize(resize_for(image_size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            _normalize(),
        ]
    )


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalization of [..., 3, H, W] images: back to [0, 1] pixel values."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype).view(3, 1, 1)
    return images * std + mean

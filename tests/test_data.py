"""Self-tests of nn_speedups/data/__init__.py: small data sets written in the real on-disk layouts (real JPEG files from
PIL), loaded back through the real loaders. Each image is one flat colour that encodes its class, so a label can be
checked against the pixels it came with."""

from __future__ import annotations

import collections
import time
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from torchvision import transforms

from nn_speedups import data

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (230, 220, 40)]
# Unsorted on purpose: TinyImageNet's wnids.txt is not sorted, labels must follow the sorted order.
WNIDS = ["n09999999", "n01443537", "n04067472", "n02124075"]
SORTED_WNIDS = sorted(WNIDS)
COLOUR_OF = dict(zip(WNIDS, COLOURS, strict=True))


def write_jpeg(path: Path, colour: tuple[int, int, int], size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path, "JPEG", quality=95)


def wnid_of(image: torch.Tensor) -> str:
    """The wnid whose colour is nearest to a normalized [3, H, W] image's mean colour (checked to be close)."""
    mean = data.denormalize(image).mean(dim=(1, 2)) * 255
    distances = {
        wnid: torch.dist(mean, torch.tensor(colour, dtype=torch.float32)) for wnid, colour in COLOUR_OF.items()
    }
    wnid = min(distances, key=distances.get)
    assert distances[wnid] < 12, f"mean colour {mean.tolist()} is near no class colour"
    return wnid


def make_tinyimagenet(root: Path, train_per_class: int = 3, val_per_class: int = 2) -> Path:
    """A 4-class TinyImageNet-200 layout: wnids.txt, train/<wnid>/images/*.JPEG and boxes, val/images, annotations."""
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("".join(f"{wnid}\n" for wnid in WNIDS))
    for wnid in WNIDS:
        images = root / "train" / wnid / "images"
        for i in range(train_per_class):
            write_jpeg(images / f"{wnid}_{i}.JPEG", COLOUR_OF[wnid])
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    lines = []
    for i in range(val_per_class * len(WNIDS)):
        wnid = WNIDS[i % len(WNIDS)]
        write_jpeg(root / "val" / "images" / f"val_{i}.JPEG", COLOUR_OF[wnid])
        lines.append(f"val_{i}.JPEG\t{wnid}\t{i}\t2\t50\t60\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    return root


IMAGENET_COUNTS = {"n09999999": 5, "n01443537": 3, "n04067472": 7, "n02124075": 2}


def make_imagenet_val(root: Path, counts: dict[str, int] = IMAGENET_COUNTS) -> Path:
    """An ImageNet-style validation folder: PATH/<wnid>/ILSVRC2012_val_*.JPEG, uneven class sizes, 80x60 images."""
    number = 0
    for wnid, count in counts.items():
        for _ in range(count):
            number += 1
            path = root / wnid / f"ILSVRC2012_val_{number:08d}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (80, 60), COLOUR_OF[wnid]).save(path, "JPEG", quality=95)
    return root


@pytest.fixture(scope="module")
def tinyimagenet(tmp_path_factory) -> Path:
    return make_tinyimagenet(tmp_path_factory.mktemp("tin") / "tiny-imagenet-200")


@pytest.fixture(scope="module")
def imagenet_val(tmp_path_factory) -> Path:
    return make_imagenet_val(tmp_path_factory.mktemp("inet") / "val")


# ------------------------------------------------------------------------------------------------- sources


def test_parse_source_reads_the_three_forms():
    assert data.parse_source("synthetic") == data.DataSource("synthetic", None)
    assert data.parse_source("tinyimagenet:/data/tiny-imagenet-200") == data.DataSource(
        "tinyimagenet", Path("/data/tiny-imagenet-200")
    )
    source = data.parse_source(" imagenet-val:/data/val ")
    assert (source.kind, source.path, str(source)) == ("imagenet-val", Path("/data/val"), "imagenet-val:/data/val")
    with pytest.raises(FrozenInstanceError):
        source.kind = "synthetic"


@pytest.mark.parametrize("text", ["imagenet:/x", "cifar10", "tinyimagenet", "tinyimagenet:", "synthetic:/x", ""])
def test_parse_source_rejects_unknown_forms_listing_the_valid_ones(text):
    with pytest.raises(ValueError) as error:
        data.parse_source(text)
    for form in ("'synthetic'", "'tinyimagenet:PATH'", "'imagenet-val:PATH'"):
        assert form in str(error.value)


# ---------------------------------------------------------------------------------------------- transforms


def test_transform_pipelines_are_the_seeds_at_224():
    train, val = data.train_transform(224).transforms, data.eval_transform(224).transforms
    assert [type(t) for t in train] == [
        transforms.Resize,
        transforms.RandomCrop,
        transforms.RandomHorizontalFlip,
        transforms.ToTensor,
        transforms.Normalize,
    ]
    assert [type(t) for t in val] == [
        transforms.Resize,
        transforms.CenterCrop,
        transforms.ToTensor,
        transforms.Normalize,
    ]
    for resize in (train[0], val[0]):
        assert resize.size == 256 and resize.interpolation == transforms.InterpolationMode.BICUBIC
    assert tuple(train[1].size) == (224, 224) and train[2].p == 0.5 and tuple(val[1].size) == (224, 224)
    for normalize in (train[-1], val[-1]):
        assert tuple(normalize.mean) == data.IMAGENET_MEAN and tuple(normalize.std) == data.IMAGENET_STD


@pytest.mark.parametrize(("image_size", "resize"), [(224, 256), (112, 128), (64, 73), (32, 37)])
def test_transforms_turn_a_64_image_into_image_size(image_size, resize):
    image = Image.new("RGB", (64, 64), COLOURS[0])
    assert data.resize_for(image_size) == resize
    for transform in (data.train_transform(image_size), data.eval_transform(image_size)):
        out = transform(image)
        assert out.shape == (3, image_size, image_size) and out.dtype == torch.float32


def test_eval_transform_normalizes_with_imagenet_statistics():
    out = data.eval_transform(224)(Image.new("RGB", (64, 64), (255, 128, 0)))
    expected = (torch.tensor([1.0, 128 / 255, 0.0]) - torch.tensor(data.IMAGENET_MEAN)) / torch.tensor(
        data.IMAGENET_STD
    )
    torch.testing.assert_close(out.mean(dim=(1, 2)), expected, atol=0.02, rtol=0)
    torch.testing.assert_close(
        data.denormalize(out).mean(dim=(1, 2)), torch.tensor([1.0, 128 / 255, 0.0]), atol=5e-3, rtol=0
    )


def textured_image(size: int = 64) -> Image.Image:
    """Left half dark, right half bright, plus a fixed noise texture so that different crops differ."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 60, (size, size, 3), generator=generator, dtype=torch.uint8)
    pixels[:, size // 2 :] += 180
    return Image.fromarray(pixels.numpy())


def left_is_darker(image: torch.Tensor) -> bool:
    half = image.shape[-1] // 2
    return bool(image[..., :half].mean() < image[..., half:].mean())


def test_train_crop_is_random_but_repeats_under_a_seed():
    image, transform = textured_image(), data.train_transform(224)
    outputs = []
    for seed in range(6):
        torch.manual_seed(seed)
        first = transform(image)
        torch.manual_seed(seed)
        torch.testing.assert_close(transform(image), first, atol=0, rtol=0)
        outputs.append(first)
    assert len({tuple(out.flatten()[::997].tolist()) for out in outputs}) == len(outputs)


def test_train_transform_flips_and_eval_transform_never_does():
    image = textured_image()
    torch.manual_seed(0)
    flips = collections.Counter(left_is_darker(data.train_transform(64)(image)) for _ in range(40))
    assert flips[True] >= 8 and flips[False] >= 8, flips
    evaluated = [data.eval_transform(224)(image) for _ in range(3)]
    assert all(left_is_darker(out) for out in evaluated)
    torch.testing.assert_close(evaluated[0], evaluated[2], atol=0, rtol=0)


# -------------------------------------------------------------------------------------------- tinyimagenet


def test_tinyimagenet_loads_images_with_the_labels_of_their_class(tinyimagenet):
    splits = data.build_datasets(f"tinyimagenet:{tinyimagenet}")
    assert splits.classes == SORTED_WNIDS and splits.num_classes == 4
    assert (len(splits.train), len(splits.val)) == (12, 8)  # the <wnid>_boxes.txt files are not images
    for dataset in (splits.train, splits.val):
        labels = collections.Counter()
        for image, label in dataset:
            assert image.shape == (3, 224, 224) and image.dtype == torch.float32
            assert splits.classes[label] == wnid_of(image)
            labels[label] += 1
        assert sorted(labels) == [0, 1, 2, 3]


def test_tinyimagenet_train_and_val_share_one_class_mapping(tinyimagenet):
    splits = data.build_datasets(f"tinyimagenet:{tinyimagenet}")
    assert splits.train.classes == splits.val.classes == splits.classes
    assert splits.train.class_to_idx == {wnid: i for i, wnid in enumerate(SORTED_WNIDS)}
    annotated = {}
    for line in (tinyimagenet / "val" / "val_annotations.txt").read_text().splitlines():
        name, wnid = line.split("\t")[:2]
        annotated[name] = wnid
    for path, label in splits.val.samples:
        assert splits.train.class_to_idx[annotated[Path(path).name]] == label
    for path, label in splits.train.samples:
        assert Path(path).parts[-3] == splits.classes[label] and Path(path).parent.name == "images"


def test_tinyimagenet_train_augmentation_repeats_under_a_seed(tinyimagenet):
    train = data.build_datasets(f"tinyimagenet:{tinyimagenet}", image_size=32).train
    torch.manual_seed(1)
    first = train[0][0]
    torch.manual_seed(1)
    torch.testing.assert_close(train[0][0], first, atol=0, rtol=0)
    assert first.shape == (3, 32, 32)


def test_tinyimagenet_class_and_eval_subsets(tinyimagenet):
    splits = data.build_datasets(f"tinyimagenet:{tinyimagenet}", num_classes=2, eval_samples=2, seed=5)
    assert splits.classes == SORTED_WNIDS[:2] and splits.num_classes == 2
    assert sorted(splits.train.targets) == [0, 0, 0, 1, 1, 1]
    assert sorted(label for _, label in splits.val) == [0, 1]
    again = data.build_datasets(f"tinyimagenet:{tinyimagenet}", num_classes=2, eval_samples=2, seed=5)
    assert splits.val.indices == again.val.indices
    with pytest.raises(ValueError, match="num_classes=9 but the folder has 4 classes"):
        data.build_datasets(f"tinyimagenet:{tinyimagenet}", num_classes=9)


def break_layout(root: Path, how: str) -> str:
    """Damage a fresh TinyImageNet folder one way; return a pattern the error message must contain."""
    annotations = root / "val" / "val_annotations.txt"
    if how == "no-root":
        return f"missing {root.parent / 'nowhere'}"
    if how == "no-wnids":
        (root / "wnids.txt").unlink()
        return f"missing {root / 'wnids.txt'} (expected the TinyImageNet-200 layout"
    if how == "no-annotations":
        annotations.unlink()
        return f"missing {annotations} (expected the TinyImageNet-200 layout"
    if how == "no-val-images":
        for image in (root / "val" / "images").iterdir():
            image.unlink()
        (root / "val" / "images").rmdir()
        return f"missing {root / 'val' / 'images'}/"
    if how == "annotated-image-missing":
        (root / "val" / "images" / "val_3.JPEG").unlink()
        return f"line 4 names {root / 'val' / 'images' / 'val_3.JPEG'}, which is missing"
    if how == "unknown-wnid":
        annotations.write_text(annotations.read_text() + "val_0.JPEG\tn00000042\t0\t0\t1\t1\n")
        return "line 9 names wnid 'n00000042', not in wnids.txt"
    if how == "no-train-class":
        for image in (root / "train" / "n04067472" / "images").iterdir():
            image.unlink()
        (root / "train" / "n04067472" / "images").rmdir()
        return f"missing {root / 'train' / 'n04067472' / 'images'}/"
    if how == "empty-train-class":
        for image in (root / "train" / "n01443537" / "images").iterdir():
            image.unlink()
        return f"no images in {root / 'train' / 'n01443537' / 'images'}/"
    if how == "empty-wnids":
        (root / "wnids.txt").write_text("\n")
        return "lists no wnids"
    raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "error"),
    [
        ("no-root", FileNotFoundError),
        ("no-wnids", FileNotFoundError),
        ("no-annotations", FileNotFoundError),
        ("no-val-images", FileNotFoundError),
        ("annotated-image-missing", FileNotFoundError),
        ("unknown-wnid", ValueError),
        ("no-train-class", FileNotFoundError),
        ("empty-train-class", FileNotFoundError),
        ("empty-wnids", ValueError),
    ],
)
def test_tinyimagenet_layout_errors_name_what_is_missing(tmp_path, how, error):
    root = make_tinyimagenet(tmp_path / "tiny", train_per_class=1, val_per_class=2)
    expected = break_layout(root, how)
    path = tmp_path / "nowhere" if how == "no-root" else root
    with pytest.raises(error) as raised:
        data.build_datasets(f"tinyimagenet:{path}")
    assert str(raised.value).startswith(f"tinyimagenet:{path}: ")
    assert expected in str(raised.value)


# -------------------------------------------------------------------------------------------- imagenet-val


def test_imagenet_val_is_evaluation_only_with_labels_of_the_sorted_classes(imagenet_val):
    splits = data.build_datasets(f"imagenet-val:{imagenet_val}", image_size=64)
    assert splits.train is None and splits.classes == SORTED_WNIDS and splits.num_classes == 4
    assert len(splits.val) == 17  # the default 1024 exceeds the folder: all of it
    counts = collections.Counter()
    for image, label in splits.val:
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        assert splits.classes[label] == wnid_of(image)
        counts[splits.classes[label]] += 1
    assert counts == IMAGENET_COUNTS


def class_counts(splits: data.Splits) -> list[int]:
    counts = collections.Counter(splits.val.dataset.targets[i] for i in splits.val.indices)
    return [counts[label] for label in range(splits.num_classes)]


def test_imagenet_val_subset_is_deterministic_stratified_and_sized(imagenet_val):
    source = f"imagenet-val:{imagenet_val}"
    eight = data.build_datasets(source, eval_samples=8, seed=0)
    assert len(eight.val) == 8 and class_counts(eight) == [2, 2, 2, 2]
    assert eight.val.indices == data.build_datasets(source, eval_samples=8, seed=0).val.indices
    assert eight.val.indices != data.build_datasets(source, eval_samples=8, seed=1).val.indices
    ten = data.build_datasets(source, eval_samples=10, seed=0)
    assert len(ten.val) == 10 and max(class_counts(ten)) - min(class_counts(ten)) <= 1
    image, label = ten.val[0]
    assert image.shape == (3, 224, 224) and ten.classes[label] == wnid_of(image)


@given(
    targets=st.lists(st.integers(0, 5), min_size=1, max_size=60),
    samples=st.integers(1, 70),
    seed=st.integers(0, 2**31),
)
@settings(max_examples=60, deadline=None)
def test_stratified_subset_balances_classes_until_they_run_out(targets, samples, seed):
    chosen = data.stratified_subset(targets, samples, seed)
    assert chosen == sorted(set(chosen)) and len(chosen) == min(samples, len(targets))
    assert chosen == data.stratified_subset(targets, samples, seed)
    taken = collections.Counter(targets[i] for i in chosen)
    available = collections.Counter(targets)
    for a in available:
        for b in available:
            assert taken[a] >= taken[b] - 1 or taken[a] == available[a], (taken, available)


def test_imagenet_val_wnids_file_keeps_labels_of_a_partial_folder(tmp_path):
    root = make_imagenet_val(tmp_path / "val", {"n04067472": 2, "n09999999": 1})
    full = ["n00000001", *WNIDS]
    (root / "wnids.txt").write_text("".join(f"{wnid} some words, about it\n" for wnid in full))
    splits = data.build_datasets(f"imagenet-val:{root}", image_size=32)
    assert splits.classes == sorted(full) and splits.num_classes == 5
    assert sorted(label for _, label in splits.val) == [3, 3, 4]
    first_two = data.build_datasets(f"imagenet-val:{root}", image_size=32, num_classes=4)
    assert first_two.classes == sorted(full)[:4] and [label for _, label in first_two.val] == [3, 3]


@pytest.mark.parametrize("how", ["missing", "empty", "flat", "empty-class", "unlisted-class"])
def test_imagenet_val_errors_name_what_is_missing(tmp_path, how):
    root = tmp_path / "val"
    if how == "missing":
        expected, error = f"missing {root}/ (expected an ImageNet-style validation folder", FileNotFoundError
    elif how == "empty":
        root.mkdir()
        expected, error = f"no class folders in {root}/", FileNotFoundError
    elif how == "flat":
        for i in range(3):
            write_jpeg(root / f"ILSVRC2012_val_{i:08d}.JPEG", COLOURS[0])
        expected, error = "it holds 3 images directly: sort them into class folders first", FileNotFoundError
    elif how == "empty-class":
        make_imagenet_val(root, {"n01443537": 2})
        (root / "n02124075").mkdir()
        (root / "n02124075" / "notes.txt").write_text("not an image")
        expected, error = f"no images in {root / 'n02124075'}/", FileNotFoundError
    else:
        make_imagenet_val(root, {"n01443537": 1, "n02124075": 1})
        (root / "wnids.txt").write_text("n01443537\n")
        expected, error = "class folders n02124075 are not listed in", ValueError
    with pytest.raises(error) as raised:
        data.build_datasets(f"imagenet-val:{root}")
    assert str(raised.value).startswith(f"imagenet-val:{root}: ") and expected in str(raised.value)


# ----------------------------------------------------------------------------------------------- synthetic


def test_synthetic_samples_are_a_function_of_seed_split_and_index():
    a, b = data.SyntheticImages(50, seed=3), data.SyntheticImages(50, seed=3)
    for index in (0, 7, 49, 7):
        torch.testing.assert_close(a[index][0], b[index][0], atol=0, rtol=0)
        assert a[index][1] == b[index][1] == index % 10
    other_seed = data.SyntheticImages(50, seed=4)
    assert not torch.equal(a[7][0], other_seed[7][0])
    image = a[0][0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    pixels = data.denormalize(image)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5 and pixels.std() > 0.1


def test_synthetic_classes_are_balanced_and_splits_differ():
    splits = data.build_datasets("synthetic", image_size=32, eval_samples=60, train_samples=200, seed=1)
    assert (splits.num_classes, len(splits.train), len(splits.val)) == (10, 200, 60)
    assert splits.classes == splits.train.classes == [f"class{c}" for c in range(10)]
    assert set(collections.Counter(splits.train.targets).values()) == {20}
    assert set(collections.Counter(label for _, label in splits.val).values()) == {6}
    train = torch.stack([splits.train[i][0] for i in range(60)])
    val = torch.stack([splits.val[i][0] for i in range(60)])
    assert torch.cdist(train.flatten(1), val.flatten(1)).min() > 1.0  # no val image repeats a train image
    default = data.build_datasets("synthetic", num_classes=3)
    assert (default.num_classes, len(default.train), len(default.val)) == (3, 2560, 512)
    assert default.val[0][0].shape == (3, 224, 224)


def stacked(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.tensor(labels)


def test_synthetic_set_is_learnable_and_colour_alone_is_not_enough():
    """A tiny CNN, three epochs on CPU (a few seconds), gets far above chance (10%); mean colour alone does not."""
    started = time.perf_counter()
    torch.manual_seed(0)
    splits = data.build_datasets("synthetic", image_size=32, eval_samples=500, train_samples=2000, seed=0)
    train_x, train_y = stacked(splits.train)
    val_x, val_y = stacked(splits.val)
    colour, val_colour = train_x.mean(dim=(2, 3)), val_x.mean(dim=(2, 3))
    centroids = torch.stack([colour[train_y == c].mean(0) for c in range(10)])
    colour_accuracy = (torch.cdist(val_colour, centroids).argmin(1) == val_y).float().mean().item()
    model = nn.Sequential(
        nn.Conv2d(3, 16, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = data.make_loader(TensorDataset(train_x, train_y), batch_size=64, shuffle=True, seed=0)
    for _ in range(3):
        for images, labels in loader:
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (model(val_x).argmax(1) == val_y).float().mean().item()
    seconds = time.perf_counter() - started
    print(f"synthetic: tiny CNN val accuracy {accuracy:.3f}, colour alone {colour_accuracy:.3f}, {seconds:.1f} s")
    assert accuracy > 0.4, f"val accuracy {accuracy:.3f} after 3 epochs, want > 0.4 (chance 0.1)"
    assert colour_accuracy < 0.55 and accuracy > colour_accuracy + 0.1, (accuracy, colour_accuracy)


# --------------------------------------------------------------------------------------------------- loaders


def test_make_loader_shuffles_by_its_seed_alone():
    dataset = TensorDataset(torch.arange(100))
    order = lambda seed: torch.cat([b for (b,) in data.make_loader(dataset, 16, shuffle=True, seed=seed)]).tolist()
    torch.manual_seed(123)
    first = order(7)
    torch.manual_seed(456)  # the global RNG does not matter
    assert order(7) == first and order(8) != first and sorted(first) == list(range(100))
    assert torch.cat([b for (b,) in data.make_loader(dataset, 16, shuffle=False)]).tolist() == list(range(100))
    assert [len(b) for (b,) in data.make_loader(dataset, 16, shuffle=False, drop_last=True)] == [16] * 6


class RandomAugmentation(Dataset):
    """Index -> a draw from torch's RNG, standing in for a random crop in a worker process."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(1)


def test_make_loader_with_workers_repeats_random_augmentations():
    draws = lambda seed: torch.cat(list(data.make_loader(RandomAugmentation(), 2, False, workers=2, seed=seed)))
    first = draws(0)
    torch.testing.assert_close(draws(0), first, atol=0, rtol=0)
    assert not torch.equal(draws(1), first)

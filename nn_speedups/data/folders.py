"""The folder sources: TinyImageNet-200 and ImageNet-style validation folders, checked, labelled and subset."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

from nn_speedups.data.sources import DataSource, Splits
from nn_speedups.data.transforms import eval_transform, train_transform

IMAGENET_EVAL_SAMPLES = 1024  # seed 004 evaluates DenseNet-121 on 1024 ImageNet validation images
TINYIMAGENET_LAYOUT = "expected the TinyImageNet-200 layout: wnids.txt, train/<wnid>/images/*.JPEG, val/images/, "
TINYIMAGENET_LAYOUT += "val/val_annotations.txt"
IMAGENET_VAL_LAYOUT = "expected an ImageNet-style validation folder: PATH/<wnid>/*.JPEG, one folder per class"


# ------------------------------------------------------------------------------------ shared by both


class LabelledImages(Dataset):
    """A list of (image path, label) pairs read with PIL (as RGB) and passed through `transform`."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], transform=None) -> None:
        self.samples, self.classes, self.transform = samples, classes, transform
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = default_loader(path)
        return (self.transform(image) if self.transform else image), label


class _ClassListFolder(ImageFolder):
    """ImageFolder whose classes (and so labels) are a given list instead of the sorted folder names."""

    def __init__(self, root: Path, classes: list[str], **kwargs) -> None:
        self._fixed_classes = list(classes)
        super().__init__(root, **kwargs)

    def find_classes(self, directory) -> tuple[list[str], dict[str, int]]:
        return self._fixed_classes, {name: i for i, name in enumerate(self._fixed_classes)}


def is_image(path: str | Path) -> bool:
    return str(path).lower().endswith(IMG_EXTENSIONS)


def _require(path: Path, source: DataSource, layout: str, directory: bool) -> None:
    if not (path.is_dir() if directory else path.is_file()):
        raise FileNotFoundError(f"{source}: missing {path}{'/' if directory else ''} ({layout})")


def _limit_classes(classes: list[str], num_classes: int | None, source: DataSource) -> list[str]:
    if num_classes is None:
        return classes
    if not 1 <= num_classes <= len(classes):
        raise ValueError(f"{source}: num_classes={num_classes} but the folder has {len(classes)} classes")
    return classes[:num_classes]


def stratified_subset(targets: list[int], samples: int | None, seed: int = 0) -> list[int]:
    """A deterministic, class-balanced choice of `samples` indices into `targets` (all of them when None or more).

    Each class's indices are shuffled by a generator seeded with `seed`; then classes take turns in label order,
    one index per turn, until `samples` are taken: class counts differ by at most one unless a class runs out.
    Returned in ascending order.
    """
    if samples is None or samples >= len(targets):
        return list(range(len(targets)))
    if samples < 1:
        raise ValueError(f"eval_samples must be >= 1, got {samples}")
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(targets):
        by_class.setdefault(label, []).append(index)
    queues = [
        [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        for _, members in sorted(by_class.items())
    ]
    chosen: list[int] = []
    for turn in range(max(len(queue) for queue in queues)):
        chosen += [queue[turn] for queue in queues if turn < len(queue)]
        if len(chosen) >= samples:
            break
    return sorted(chosen[:samples])


def _subset(dataset: Dataset, eval_samples: int | None, seed: int) -> Dataset:
    if eval_samples is None or eval_samples >= len(dataset):
        return dataset
    return Subset(dataset, stratified_subset(dataset.targets, eval_samples, seed))


# ------------------------------------------------------------------------------------------ tinyimagenet


def tinyimagenet_splits(
    source: DataSource,
    image_size: int = 224,
    num_classes: int | None = None,
    eval_samples: int | None = None,
    seed: int = 0,
) -> Splits:
    """TinyImageNet-200 as distributed (http://cs231n.stanford.edu/tiny-imagenet-200.zip), unpacked at PATH:

        PATH/wnids.txt                        one wnid per line (200 lines)
        PATH/train/<wnid>/images/*.JPEG       500 64x64 training images per class (<wnid>_boxes.txt is ignored)
        PATH/val/images/*.JPEG                10,000 validation images
        PATH/val/val_annotations.txt          tab-separated: file name, wnid, x0, y0, x1, y1

    Labels index the *sorted* wnids, the same mapping for train and val (what ImageFolder on train/ gives).
    PATH/test/ (unlabelled) is not used. Train uses `train_transform`, val `eval_transform`.
    """
    root = source.path
    _require(root, source, TINYIMAGENET_LAYOUT, directory=True)
    for required, directory in (("wnids.txt", False), ("train", True), ("val/images", True)):
        _require(root / required, source, TINYIMAGENET_LAYOUT, directory)
    _require(root / "val" / "val_annotations.txt", source, TINYIMAGENET_LAYOUT, directory=False)
    all_classes = _read_wnids(root / "wnids.txt", source)
    classes = _limit_classes(all_classes, num_classes, source)
    _check_train_folders(root / "train", classes, source)
    train = _ClassListFolder(
        root / "train", classes, transform=train_transform(image_size), is_valid_file=_is_tinyimagenet_train_image
    )
    val_samples = _read_val_annotations(root / "val", all_classes, source)
    keep = {name: all_classes.index(name) for name in classes}
    val_samples = [(path, keep[wnid]) for path, wnid in val_samples if wnid in keep]
    val = LabelledImages(val_samples, classes, eval_transform(image_size))
    return Splits(train=train, val=_subset(val, eval_samples, seed), classes=classes, num_classes=len(classes))


def _is_tinyimagenet_train_image(path: str) -> bool:
    return is_image(path) and Path(path).parent.name == "images"


def _read_wnids(path: Path, source: DataSource, layout: str = TINYIMAGENET_LAYOUT) -> list[str]:
    """The wnids listed in `path`, sorted (label order); empty or duplicated lists are malformed."""
    wnids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not wnids:
        raise ValueError(f"{source}: {path} lists no wnids ({layout})")
    duplicates = sorted({w for w in wnids if wnids.count(w) > 1})
    if duplicates:
        raise ValueError(f"{source}: {path} lists {', '.join(duplicates[:5])} more than once")
    return sorted(wnids)


def _check_train_folders(train: Path, classes: list[str], source: DataSource) -> None:
    """Every class needs train/<wnid>/images/ holding at least one image."""
    missing = [wnid for wnid in classes if not (train / wnid / "images").is_dir()]
    if missing:
        shown = ", ".join(f"{train / wnid / 'images'}/" for wnid in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{source}: missing {shown}{more} ({TINYIMAGENET_LAYOUT})")
    empty = [wnid for wnid in classes if not any(is_image(f) for f in os.listdir(train / wnid / "images"))]
    if empty:
        shown = ", ".join(f"{train / wnid / 'images'}/" for wnid in empty[:5])
        raise FileNotFoundError(f"{source}: no images in {shown} ({TINYIMAGENET_LAYOUT})")


def _read_val_annotations(val: Path, wnids: list[str], source: DataSource) -> list[tuple[str, str]]:
    """(image path, wnid) for each line of val/val_annotations.txt; unknown wnids and missing images are errors."""
    annotations = val / "val_annotations.txt"
    present = set(os.listdir(val / "images"))
    known = set(wnids)
    samples = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2:
            raise ValueError(
                f"{source}: {annotations} line {number} is malformed, expected "
                f"'<file>\\t<wnid>\\tx0\\ty0\\tx1\\ty1': {line!r}"
            )
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in known:
            raise ValueError(f"{source}: {annotations} line {number} names wnid {wnid!r}, not in wnids.txt")
        if name not in present:
            raise FileNotFoundError(
                f"{source}: {annotations} line {number} names {val / 'images' / name}, which is missing"
            )
        samples.append((str(val / "images" / name), wnid))
    if not samples:
        raise ValueError(f"{source}: {annotations} lists no images ({TINYIMAGENET_LAYOUT})")
    return samples


# ------------------------------------------------------------------------------------------ imagenet-val


def imagenet_val_splits(
    source: DataSource,
    image_size: int = 224,
    num_classes: int | None = None,
    eval_samples: int | None = None,
    seed: int = 0,
) -> Splits:
    """An ImageNet-style validation folder at PATH, evaluation only (`train` is None):

        PATH/<wnid>/*.JPEG       one folder per class (the ILSVRC2012 val set sorted into its 1000 classes)
        PATH/wnids.txt           optional: the full class list, one wnid per line (first word; so the Kaggle
                                 LOC_synset_mapping.txt format works too), when PATH holds only some classes

    Labels index the sorted class list: the sorted folder names, or the sorted wnids.txt when present, so that
    labels match a pretrained 1000-class head even for a partial folder. `eval_samples` images (default 1024) are
    kept, a deterministic stratified subset (`stratified_subset`: shuffled within class by `seed`, classes taking
    turns). Images get `eval_transform`.
    """
    root = source.path
    _require(root, source, IMAGENET_VAL_LAYOUT, directory=True)
    folders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not folders:
        flat = sum(1 for f in os.listdir(root) if is_image(f))
        hint = f"; it holds {flat} images directly: sort them into class folders first" if flat else ""
        raise FileNotFoundError(f"{source}: no class folders in {root}/ ({IMAGENET_VAL_LAYOUT}){hint}")
    classes = _imagenet_classes(root, folders, source)
    classes = _limit_classes(classes, num_classes, source)
    present = [name for name in classes if name in folders]
    empty = [name for name in present if not any(is_image(f) for f in os.listdir(root / name))]
    if empty:
        shown = ", ".join(f"{root / name}/" for name in empty[:5])
        raise FileNotFoundError(f"{source}: no images in {shown} ({IMAGENET_VAL_LAYOUT})")
    if not present:
        raise FileNotFoundError(f"{source}: none of the first {len(classes)} classes has a folder in {root}/")
    val = _ClassListFolder(root, classes, transform=eval_transform(image_size), allow_empty=True)
    samples = IMAGENET_EVAL_SAMPLES if eval_samples is None else eval_samples
    return Splits(train=None, val=_subset(val, samples, seed), classes=classes, num_classes=len(classes))


def _imagenet_classes(root: Path, folders: list[str], source: DataSource) -> list[str]:
    """Sorted wnids.txt when PATH has one (every folder must be listed there), else the sorted folder names."""
    listed = root / "wnids.txt"
    if not listed.is_file():
        return folders
    wnids = _read_wnids(listed, source, IMAGENET_VAL_LAYOUT)
    unknown = sorted(set(folders) - set(wnids))
    if unknown:
        raise ValueError(f"{source}: class folders {', '.join(unknown[:5])} are not listed in {listed}")
    return wnids

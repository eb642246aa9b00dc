"""The command line: the suite's options, their parsing and validation, and the Settings built from them."""

from __future__ import annotations

import pytest

from nn_speedups.core import capabilities
from nn_speedups.matrix.axes import PROFILES, default_profile
from nn_speedups.measure.protocol import Settings
from nn_speedups.plugin.keys import INPUT_SIZES


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nn-speedups")
    group.addoption(
        "--profile",
        choices=sorted(PROFILES),
        default=None,
        help="quick (CPU default): "
        + PROFILES["quick"].summary
        + "; full (CUDA default): "
        + PROFILES["full"].summary
        + "; smoke: "
        + PROFILES["smoke"].summary,
    )
    group.addoption("--device", default=None, help="cpu or cuda (default: cuda when available, else cpu)")
    group.addoption("--models", default=None, help="comma-separated model names (default: the profile's)")
    group.addoption("--batch-sizes", default=None, help="comma-separated batch sizes, e.g. 1,4,8,16,32,64,128,256")
    group.addoption("--variants", default=None, help="comma-separated variant names to run (default: all)")
    group.addoption("--image-size", type=int, default=None, help="input height and width (default: the profile's)")
    group.addoption(
        "--weights",
        default=None,
        help="a state-dict file to load, 'pretrained' (torchvision's, local cache only) or 'random' (also for the "
        "models the quick profile would otherwise train once for its accuracy columns)",
    )
    group.addoption(
        "--data",
        default=None,
        help="images for calibration and accuracy: synthetic (default), tinyimagenet:PATH or imagenet-val:PATH",
    )
    group.addoption(
        "--checkpoint",
        default=None,
        help="a nn_speedups.train checkpoint: its weights, and by default its model, data and image size; every "
        "inference variant then reports top-1/top-5 on the data's evaluation images",
    )
    group.addoption("--eval-samples", type=int, default=None, help="evaluation images (default: quick 128, full 1024)")
    group.addoption("--report-dir", default="reports", help="where the end-of-run report is written")
    group.addoption(
        "--model",
        action="append",
        default=None,
        metavar="[NAME=]MODULE:FACTORY",
        help="your own model (repeatable; also accepted inside --models): module.path:factory or file.py:factory, "
        "whose factory() returns (model, example_inputs) or a ModelSpec; or hf:PATH, a local Hugging Face folder",
    )
    group.addoption(
        "--onnx",
        action="append",
        default=None,
        metavar="[NAME=]PATH",
        help="an ONNX file (repeatable), run by the ONNX Runtime and TensorRT benches against ONNX Runtime fp32",
    )
    group.addoption(
        "--onnx-dim",
        action="append",
        default=None,
        metavar="NAME=SIZE",
        help="size of an open (symbolic) input dim of an --onnx graph other than the batch, e.g. sequence=128",
    )
    group.addoption(
        "--onnx-inputs",
        action="append",
        default=None,
        metavar="FILE.npz",
        help="inputs of an --onnx graph by name (np.savez), used as saved or tiled along the batch dim",
    )
    group.addoption(
        "--onnx-input",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="a scalar or small constant input of an --onnx graph, e.g. sr=16000 (repeatable)",
    )
    group.addoption("--seq-len", type=int, default=None, help="sequence length of hf: models (default 128)")
    group.addoption(
        "--world-sizes",
        default="1,2",
        help="distributed bench: torchrun world sizes, e.g. 1,2,4,8 (default 1,2; one process per GPU, or per core)",
    )
    group.addoption(
        "--dist-timeout", type=float, default=600.0, help="distributed bench: seconds one torchrun job may take"
    )
    group.addoption(
        "--traces",  # not --trace: pytest's own --trace breaks into pdb at every test
        default=None,
        metavar="all|SUBSTRING",
        help="after each case's timed rounds, profile a few more steps (untimed) of the cases whose test id "
        "contains SUBSTRING (or all): Chrome trace, TensorBoard run and flame chart under REPORT_DIR/<run>/, op "
        "breakdown and kernel counts in extra_info",
    )
    group.addoption(
        "--price-per-hour",
        type=float,
        default=None,
        metavar="USD",
        help="what the machine costs per hour: adds usd_per_million_samples to every row",
    )
    group.addoption(
        "--finetune-steps",
        type=int,
        default=None,
        help="compression: fine-tune steps after pruning and QAT steps, one number for both (default, per profile: "
        + ", ".join(f"{name} {p.finetune_steps} and {p.qat_steps}" for name, p in PROFILES.items())
        + ")",
    )


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _settings(config: pytest.Config) -> Settings:
    import torch

    from nn_speedups.models import REGISTRY

    checkpoint = _checkpoint_config(config)
    device = config.getoption("--device")
    if device is None:
        device = "cuda" if capabilities.has_cuda() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise pytest.UsageError(f"--device {device!r}: not a device; valid: cpu, cuda") from None
    if kind not in ("cpu", "cuda"):
        raise pytest.UsageError(f"--device {device!r}: valid: cpu, cuda")
    if kind == "cuda" and not capabilities.has_cuda():
        raise pytest.UsageError(
            f"--device {device} asked for, but this machine has no usable CUDA device "
            "(torch.cuda.is_available() is False); run with --device cpu, or on a machine with an NVIDIA GPU"
        )
    profile = PROFILES[config.getoption("--profile") or default_profile(device)]
    models = _csv(config.getoption("--models")) or ([checkpoint["model"]] if checkpoint.get("model") else None)
    models = _with_user_models(config, models)
    if models is not None:
        unknown = [m for m in models if m not in REGISTRY]
        if unknown:
            raise pytest.UsageError(f"--models: unknown {', '.join(unknown)}; valid: {', '.join(sorted(REGISTRY))}")
    batches = _csv(config.getoption("--batch-sizes"))
    if batches is not None:
        if not all(b.isdigit() and int(b) > 0 for b in batches):
            raise pytest.UsageError(
                f"--batch-sizes {config.getoption('--batch-sizes')!r}: give positive integers, e.g. 1,8,64"
            )
    image_size = config.getoption("--image-size") or checkpoint.get("image_size") or profile.image_size
    if image_size <= 0 or image_size % 32:
        raise pytest.UsageError(f"--image-size {image_size}: give a positive multiple of 32 (e.g. 224)")
    _user_image_sizes(config, models or (), image_size)
    from dataclasses import replace

    profile = replace(
        profile,
        models=tuple(models) if models else profile.models,
        batch_sizes=tuple(int(b) for b in batches) if batches else profile.batch_sizes,
        compile_models=profile.compile_models if models is None else None,
    )
    steps = config.getoption("--finetune-steps")
    if steps is not None:
        if steps < 1:
            raise pytest.UsageError(f"--finetune-steps {steps}: give a positive number of steps")
        profile = replace(profile, finetune_steps=steps, qat_steps=steps)
    data = config.getoption("--data") or checkpoint.get("data") or "synthetic"
    try:
        from nn_speedups.data import parse_source

        parse_source(data)
    except ValueError as error:
        raise pytest.UsageError(f"--data {data!r}: {error}") from None
    eval_samples = config.getoption("--eval-samples") or (1024 if profile.name == "full" else 128)
    from nn_speedups.distributed.bench import parse_world_sizes

    try:
        world_sizes = parse_world_sizes(config.getoption("--world-sizes"))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    if not config.getoption("--dist-timeout") > 0:
        raise pytest.UsageError(f"--dist-timeout {config.getoption('--dist-timeout')}: give seconds > 0, e.g. 600")
    return Settings(
        device=device,
        profile=profile,
        image_size=image_size,
        weights=config.getoption("--checkpoint") or config.getoption("--weights"),
        data=data,
        eval_samples=eval_samples,
        train_image_size=config.getoption("--image-size") or profile.train_image_size,
        world_sizes=world_sizes,
        dist_timeout_s=config.getoption("--dist-timeout"),
    )


def _with_user_models(config: pytest.Config, models: list[str] | None) -> list[str] | None:
    """`models` with the user's own (module:factory and hf:PATH entries of --models, --model, --onnx) registered as
    specs and named in their place; a bad one is a usage error naming it and the cause."""
    from nn_speedups.models.user import UserModelError, load_user_specs, register_user

    entries = [m for m in models or [] if ":" in m] + (config.getoption("--model") or [])
    onnx_files = config.getoption("--onnx") or []
    input_files, input_values = config.getoption("--onnx-inputs") or [], config.getoption("--onnx-input") or []
    if not entries and not onnx_files and not config.getoption("--onnx-dim") and not input_files and not input_values:
        return models
    try:
        dims, seq_len = config.getoption("--onnx-dim") or [], config.getoption("--seq-len")
        specs = load_user_specs(entries, onnx_files, dims, seq_len, input_files, input_values)
        names = iter([register_user(spec).name for spec in specs])
    except UserModelError as error:
        raise pytest.UsageError(str(error)) from None
    named = [next(names) if ":" in m else m for m in models or []]
    return named + list(names)


def _checkpoint_config(config: pytest.Config) -> dict:
    """The training configuration saved in --checkpoint (empty without one)."""
    path = config.getoption("--checkpoint")
    if path is None:
        return {}
    if config.getoption("--weights"):
        raise pytest.UsageError("give --weights or --checkpoint, not both")
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise pytest.UsageError(
            f"--checkpoint {path}: no such file (python -m nn_speedups.train writes OUT_DIR/last.pt)"
        ) from None
    except Exception as error:  # noqa: BLE001 - torch.load raises many kinds for a file that is not a checkpoint
        raise pytest.UsageError(f"--checkpoint {path}: not a checkpoint torch can load ({error})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise pytest.UsageError(
            f"--checkpoint {path}: no 'model' state dict in it (was it written by nn_speedups.train?)"
        )
    return saved.get("config") or {}


def _user_image_sizes(config: pytest.Config, models, image_size: int) -> None:
    """An explicit --image-size for the user's models whose example fixes a size: one float NCHW image input is
    resized to it (nn_speedups.models.user.at_image_size; the case fails in one line where the model does not take
    it), other inputs stay the model's own and the run header says so."""
    from nn_speedups.models import get_spec
    from nn_speedups.models.user import at_image_size, is_user, register_user

    sizes = config.stash[INPUT_SIZES] = {}
    if config.getoption("--image-size") is None:
        return
    for name in models:
        spec = get_spec(name)
        if is_user(spec):
            spec, sizes[name] = at_image_size(spec, image_size)
            register_user(spec)


def _user_named(config: pytest.Config) -> bool:
    return bool(config.getoption("--model") or config.getoption("--onnx"))

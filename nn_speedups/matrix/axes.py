"""Shared axes of the benchmark matrix (dtypes, batch sizes, modes) and the profiles, defined once."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}
MODES = ("fwd", "bwd", "fwd+bwd")


def low_precision(device: str) -> str:
    """The 16-bit float a device runs fastest: fp16 on CUDA (tensor cores), bf16 on a CPU (AVX512-BF16/AMX)."""
    return "fp16" if torch.device(device).type == "cuda" else "bf16"


def batch_id(batch_size: int) -> str:
    return f"bs{batch_size}"


@dataclass(frozen=True)
class Profile:
    name: str
    image_size: int
    batch_sizes: tuple[int, ...]
    models: tuple[str, ...]
    compile_models: tuple[str, ...] | None  # models whose compiled variants run; None = all
    timing_budget_s: float  # time spent in timed rounds per test, roughly
    min_rounds: int
    max_rounds: int
    warmup_rounds: int
    run_slow: bool  # variants marked slow (e.g. compile-max-autotune)
    train_image_size: int  # the training benches' input size
    train_batch_sizes: tuple[int, ...]  # the training benches' batch sizes
    kernel_sizes: tuple[int, ...]  # elements per tensor in the kernel-level benches
    kernel_dtypes: tuple[str, ...]  # dtypes of the kernel-level benches
    kernel_modes: tuple[str, ...]  # passes of the kernel-level benches: fwd, bwd, fwd+bwd (MODES)
    accuracy_models: tuple[str, ...]  # without --weights: trained once on --data so accuracy columns mean something
    family_models: dict[str, tuple[str, ...]]  # per bench family, the models it runs (others: `models`)
    family_batch_sizes: dict[str, dict[str, tuple[int, ...]]]  # per bench function or family, and model: batches
    compile_training_activations: bool  # compiled training steps of swapped activations (minutes each on a CPU)
    summary: str  # what the profile leaves out, for --help and the README
    gpu_paths_only: bool = False  # smoke: only the GPU-only variants (and their baselines), once each, small
    # Left out to keep the profile short, collected and skipped with the reason: bench test function, family or
    # family/model -> variant names ("*": the whole function). --variants NAME runs a left-out variant anyway.
    left_out: dict[str, tuple[str, ...]] = field(default_factory=dict)
    finetune_steps: int = 60  # compression: fine-tune steps after pruning (training images of --data, batch 32)
    qat_steps: int = 20  # compression: quantization-aware training steps (each costs ~3 plain steps on a CPU)


ALL_MODELS = (
    "convnext-seed",
    "resnet18",
    "resnet50",
    "densenet121",
    "mobilenet_v3_large",
    "shufflenet_v2_x1_0",
    "convnext_tiny",
    "bert-base",
)

# Seed 004's table runs DenseNet-121 at batch 1, 4, 8, 16, 32; seed 002 runs BERT from batch 1 to 256.
DEPLOYMENT_BATCH_SIZES = {"densenet121": (1, 4, 8, 16, 32), "bert-base": (1, 8, 32, 64, 128, 256)}

# Per rank (weak scaling) and global (strong): the figure a user checks before buying GPUs is resnet50 at 64 per GPU.
DISTRIBUTED_BATCH_SIZES = {"resnet50": (64,), "convnext-seed": (128,)}

PROFILES = {
    "quick": Profile(
        name="quick",
        image_size=128,
        batch_sizes=(1, 8),
        models=ALL_MODELS,
        compile_models=("convnext-seed",),
        timing_budget_s=1.0,
        min_rounds=5,
        max_rounds=200,
        warmup_rounds=2,
        run_slow=False,
        train_image_size=64,
        train_batch_sizes=(16,),
        kernel_sizes=(2**16, 2**23),  # cache-resident, and a copy of 64 MB: twice the dev CPU's 32 MB last-level cache
        kernel_dtypes=("fp32",),
        kernel_modes=("fwd", "fwd+bwd"),
        accuracy_models=("resnet18",),
        # A first run on a CPU should show the whole picture within about ten minutes (make bench): each family on
        # the models that tell most, the rest collected and skipped with the reason (--models or --profile full).
        family_models={
            "inference": ("convnext-seed", "resnet18", "resnet50", "bert-base"),
            "onnxruntime": ("resnet18", "bert-base"),
            "distributed": ("convnext-seed",),
            "compression": ("resnet18",),
        },
        family_batch_sizes={
            "test_model_inference": {"convnext-seed": (8,)},
            "onnxruntime": {"bert-base": (1,)},  # its export and session dominate; batch 8 runs in inference
            "compression": {"resnet18": (8,)},  # INT8 and pruning pay off with a batch; builds are per model
        },
        compile_training_activations=False,
        summary="images 128x128, batch sizes 1 and 8, a few telling models per family, compiled variants for "
        "convnext-seed only, no slow variants",
        left_out={
            "inference": ("compile-amp", "half"),  # channels-last-compile-amp (the faster on a CPU) and amp run
            "test_training_activation": ("*",),  # the FastSwish family trains each activation in quick
            "onnxruntime": ("ort-cpu-opt-basic", "ort-cpu-opt-extended"),  # ort-cpu (all) and -opt-disabled run
            "onnxruntime/bert-base": ("ort-int8-minmax", "ort-cpu-opt-disabled"),  # dynamic INT8 runs (QDQ: TRT's)
            "training": ("compile-amp", "channels-last-compile-amp", "fused-adamw"),  # compile and AMP run
            "distributed": ("ddp-amp", "ddp-bf16-compress"),  # plain ddp's scaling at world sizes 1 and 2 runs
        },
        finetune_steps=30,
        qat_steps=8,
    ),
    "full": Profile(
        name="full",
        image_size=224,
        batch_sizes=(1, 64),
        models=ALL_MODELS,
        compile_models=None,
        timing_budget_s=3.0,
        min_rounds=20,
        max_rounds=1000,
        warmup_rounds=5,
        run_slow=True,
        train_image_size=224,
        train_batch_sizes=(128,),
        kernel_sizes=(2**16, 2**20, 2**24, 2**26, 2**28),
        kernel_dtypes=("fp32", "bf16"),
        kernel_modes=MODES,
        accuracy_models=("resnet18", "resnet50", "densenet121"),
        family_models={},
        family_batch_sizes={
            "onnxruntime": DEPLOYMENT_BATCH_SIZES,
            "tensorrt": DEPLOYMENT_BATCH_SIZES,
            "distributed": DISTRIBUTED_BATCH_SIZES,
            "compression": DEPLOYMENT_BATCH_SIZES,
        },
        compile_training_activations=True,
        summary="the seeds' settings: images 224x224, batch sizes 1 and 64 (deployment benches: densenet121 at "
        "1-32, bert-base at 1-256), every model and variant",
        finetune_steps=300,
        qat_steps=300,
    ),
}


# The first GPU machine a checkout meets should prove every GPU-only path at once: one small case each of the
# variants marked `gpu` (CUDA graphs, fp16 autocast, TF32, ONNX Runtime's CUDA and TensorRT providers, native
# TensorRT, NVML memory, ...) and the compiled Triton kernel, with their eager baselines; on a CPU each skips with
# its reason. `make gpu-smoke` runs it with the GPU workflow's own steps (save, report, gate).
PROFILES["smoke"] = Profile(
    name="smoke",
    image_size=64,
    batch_sizes=(2,),
    models=("resnet18", "convnext-seed", "bert-base"),
    compile_models=None,
    timing_budget_s=0.2,
    min_rounds=3,
    max_rounds=50,
    warmup_rounds=2,
    run_slow=False,
    train_image_size=64,
    train_batch_sizes=(4,),
    kernel_sizes=(2**20,),
    kernel_dtypes=("fp32",),
    kernel_modes=MODES,
    accuracy_models=(),
    family_models={
        **{family: ("resnet18",) for family in ("inference", "onnxruntime", "tensorrt")},
        **{family: ("convnext-seed",) for family in ("training", "distributed")},
        "compression": ("bert-base",),  # sparse-2to4 (2:4 sparse tensor cores) applies to transformers
    },
    family_batch_sizes={},
    compile_training_activations=False,
    summary="every GPU-only path once, small (resnet18 at 64x64, batch 2; training and distributed: convnext-seed; "
    "2:4 sparsity: bert-base): a first GPU machine's proof; on a CPU each skips with its reason",
    gpu_paths_only=True,
)


def default_profile(device: str) -> str:
    return "full" if torch.device(device).type == "cuda" else "quick"

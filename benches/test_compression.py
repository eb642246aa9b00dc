"""Model compression in PyTorch: INT8 (static PT2E, dynamic, QAT) with torchao, pruning that removes work (channels,
with torch-pruning and a fine-tune), unstructured magnitude pruning, 2:4 semi-structured sparsity, and knowledge
distillation: the "making models smaller" techniques, with what each costs in accuracy.

Measures, per model and batch: latency, samples/s, `speedup_vs_eager` and `speedup_vs_compiled` (over the same
uncompressed model compiled with Inductor: the `compile` row, which runs in every profile here), top-1/top-5 and
top-1 agreement with eager on the evaluation images of `--data`, SQNR against eager, `params` and `gflops` of the
compressed model (a channel-pruned model really has fewer), `model_size_mb` from the file actually saved under
artifacts/compression/ (a pruned-but-dense model is not smaller), the weight-coding stages
(nn_speedups.measure.weight_coding: int8 codes, Huffman coded with an exact decode round trip = `compressed_size_mb`,
optional k-means codes, zstd of the file, each as a ratio to the fp32 file), `build_s` (calibration, pruning, fine-tune:
apart from latency and from `compile_s`), `top1_before_finetune` / `top1_after_finetune`, `sparsity`. The `eager` and
`compile` rows carry the uncompressed file and what weight coding alone makes of it (models under 50M parameters; larger
ones their file).

Correctness before timing (thresholds in nn_speedups/measure/correctness.py):
- `pt-int8-static`, `pt-int8-dynamic`: `lossy` (SQNR >= 20 dB against eager fp32; top-1 agreement reported); the
  graph must hold quantization ops and int8 weights, and must not recompile (a recompile loses Inductor freezing).
- pruned, fine-tuned, QAT-trained and distilled models change the function on purpose: `accuracy`, top-1 on
  evaluation images that no fine-tune, calibration or training saw, reported against their reference (the row's
  `top1_drop` and `reference_kind`) and failed more than 10 points below both it and the uncompressed model. The
  reference of a variant that trains is its matched control, never the untouched model: the uncompressed model
  fine-tuned with the same steps, lr and batches (`control_top1`; a quick-trained net gains from any fine-tune, and
  that gain is not compression's), and for a distilled student the same architecture trained alone on the same
  budget. Plus "it engaged": real sparsity reached (unstructured), layers really narrower and fewer parameters
  (channels). They need trained weights: a `--checkpoint`, or a model the profile trains (quick: resnet18,
  resnet50); elsewhere they skip with that reason.
- `sparse-2to4` (bert-base, fp16, CUDA compute capability >= 8.0): the sparse kernels' output has cosine >= 0.99
  with the same 2:4-pruned model run with dense kernels; skips elsewhere with the reason.
All fine-tunes and calibrations use the training split of `--data`; accuracy is measured on its evaluation split.
Unstructured pruning keeps dense kernels, so expect no speed-up from it: the row says so (`info_kernels`).

    pytest benches/test_compression.py --benchmark-autosave
    pytest benches/test_compression.py --models resnet50 --batch-sizes 8 --checkpoint runs/resnet50-e3/last.pt
    pytest benches/test_compression.py --models bert-base --batch-sizes 1,8 --variants eager,compile,pt-int8-dynamic
    pytest benches/test_compression.py -k distill --profile full --image-size 128 --batch-sizes 1,8
"""

from __future__ import annotations

import time

import torch

from nn_speedups.matrix.declare import matrix
from nn_speedups.matrix.variant import Variant, VariantContext, compile_runner
from nn_speedups.measure import compression as comp
from nn_speedups.measure import metrics
from nn_speedups.optimizations import prune
from nn_speedups.optimizations import quantize_torch as qt
from nn_speedups.optimizations.base import NotEngagedError, Runner
from nn_speedups.optimizations.finetune import FineTuneConfig, clone_for_training, fine_tune

FINETUNE_LR = 3e-4  # the training recipe's lr (AdamW): a pruned network has a lot to recover in few steps
QAT_LR = 1e-5  # QAT only nudges trained weights towards the int8 grid
DISTILL_TEACHER = "resnet50"
KD_TEMPERATURE, KD_ALPHA = 4.0, 0.9
# The teacher trains longer than the students (whose budget is the profile's one short epoch): a resnet50 trained
# like them is a worse classifier than the resnet18 at 128x128, nothing to learn from.
TEACHER_RECIPE = {"epochs": 3, "train_samples": 2560}


def _finish(runner: Runner, facts: dict, model_file=None) -> Runner:
    """Attach a build's facts (record fields) and the saved file to a Runner."""
    runner.fields.update(facts)
    if model_file or facts.get("model_file"):
        runner.artifact_files = (str(model_file or facts["model_file"]),)
    return runner


CONTROL_FIELDS = ("reference_top1", "reference_kind", "control_top1", "control_steps", "control_lr")


def matched_control(model, ctx: VariantContext, config: FineTuneConfig) -> dict:
    """The fair reference of a variant that trains: the uncompressed model fine-tuned with the same steps, lr and
    batches as the variant (cached per steps and lr). A quick-trained net is far from converged, so a fine-tune alone
    gains accuracy; comparing a pruned or QAT model with the untouched one would credit compression with that gain.
    Returns the fields the accuracy check and the report read: `reference_top1` is the control's top-1."""

    def build():
        twin = clone_for_training(model)
        stats = fine_tune(twin, comp.finetune_batches(ctx), config)
        return None, {"control_top1": comp.top1_evaluator(ctx)(twin.eval()), "control_steps": stats["finetune_steps"]}

    facts = comp.CACHE.get(ctx, f"control-{config.steps}-{config.lr:g}", build)[1]
    steps = facts["control_steps"]
    return {
        "reference_top1": facts["control_top1"],
        "reference_kind": f"control: uncompressed, fine-tuned the same {steps} steps",
        "control_top1": facts["control_top1"],
        "control_steps": steps,
        "control_lr": config.lr,
    }


def _model_facts(model: torch.nn.Module, inputs: tuple) -> dict:
    """params and gflops of the model as it runs (per batch of `inputs`)."""
    return {"params": sum(p.numel() for p in model.parameters()), "gflops": metrics.count_flops(model, inputs) / 1e9}


# ------------------------------------------------------------------------------------------- INT8


def _static_graph(model, inputs, ctx: VariantContext, name: str, source=None):
    """The cached static INT8 graph of `source` (default: the model), with its size fields."""

    def build():
        graph = qt.quantize_static(source or model, inputs, comp.calibration_inputs(ctx))
        model_file, sizes = comp.size_fields(ctx, name, qt.deployable_state(graph), model)
        calibration = f"{comp.CALIBRATION_IMAGES} training images of {ctx.data}"
        return graph, {**sizes, "model_file": str(model_file), "calibration": calibration}

    return comp.CACHE.get(ctx, name, build)


def pt_int8_static(model, inputs, ctx: VariantContext) -> Runner:
    if torch.device(ctx.device).type == "cuda":
        return qt.apply_static(model, inputs, qt.StaticInt8Config(device=ctx.device), [])
    graph, facts = _static_graph(model, inputs, ctx, "pt-int8-static")
    runner = qt.runner_for_graph(graph, inputs, qt.StaticInt8Config(), {"int8_config": "PT2E X86InductorQuantizer"})
    return _finish(runner, facts)


def pt_int8_dynamic(model, inputs, ctx: VariantContext) -> Runner:
    def build():
        quantized = qt.quantize_dynamic(model)
        model_file, sizes = comp.size_fields(ctx, "pt-int8-dynamic", qt.deployable_state(quantized), model)
        return quantized, {**sizes, "model_file": str(model_file)}

    quantized, facts = comp.CACHE.get(ctx, "pt-int8-dynamic", build)
    return _finish(qt.dynamic_runner(quantized, inputs), facts)


def pt_int8_qat(model, inputs, ctx: VariantContext) -> Runner:
    def build():
        prepared = qt.prepare_qat(model, inputs)
        config = FineTuneConfig(steps=ctx.profile.qat_steps, lr=QAT_LR, device=ctx.device)
        stats = fine_tune(prepared, comp.finetune_batches(ctx), config, train_mode=qt.qat_train_mode)
        graph = qt.convert_qat(prepared)
        model_file, sizes = comp.size_fields(ctx, "pt-int8-qat", qt.deployable_state(graph), model)
        return graph, {**sizes, **stats, "model_file": str(model_file), "qat_lr": QAT_LR}

    graph, facts = comp.CACHE.get(ctx, "pt-int8-qat", build)
    runner = qt.runner_for_graph(graph, inputs, qt.StaticInt8Config(), {"int8_config": "PT2E QAT X86InductorQuantizer"})
    control = matched_control(model, ctx, FineTuneConfig(steps=ctx.profile.qat_steps, lr=QAT_LR, device=ctx.device))
    return _finish(runner, {**facts, **control})


# ------------------------------------------------------------------------------------------- pruning


def _prune_finetune(ctx: VariantContext) -> FineTuneConfig:
    return FineTuneConfig(steps=ctx.profile.finetune_steps, lr=FINETUNE_LR, device=ctx.device)


def prune_unstructured(amount: float):
    name = f"prune-unstructured-{round(amount * 100)}"

    def apply(model, inputs, ctx: VariantContext) -> Runner:
        def build():
            evaluate = comp.top1_evaluator(ctx)
            facts: dict = {}
            config = _prune_finetune(ctx)

            def finetune(masked) -> None:  # trained with the masks in place: the zeros stay zeros
                facts["top1_before_finetune"] = evaluate(masked.eval())
                facts.update(fine_tune(masked, comp.finetune_batches(ctx), config))

            pruned = prune.prune_unstructured(model, prune.UnstructuredConfig(amount), finetune=finetune)
            facts["top1_after_finetune"] = evaluate(pruned)
            model_file, sizes = comp.size_fields(ctx, name, pruned.state_dict(), model, kmeans=True)
            sparsity = prune.weight_sparsity(pruned)
            return pruned, {**facts, **sizes, "model_file": str(model_file), "sparsity": sparsity}

        pruned, facts = comp.CACHE.get(ctx, name, build)
        facts = {**facts, **matched_control(model, ctx, _prune_finetune(ctx))}

        def verify() -> None:
            if facts["sparsity"] < amount - 0.01:
                raise NotEngagedError(f"weight sparsity {facts['sparsity']:.3f} < the {amount:.2f} asked for")

        info = {"kernels": "dense: the zeros are still multiplied, no speed-up expected"}
        return _finish(Runner(fn=pruned, model=pruned, verify=verify, info=info), facts)

    return apply


def _pruned_channels(model, inputs, ctx: VariantContext, ratio: float):
    """The channel-pruned, fine-tuned model (cached) and its facts: top-1 before and after the fine-tune."""
    name = f"prune-channels-{round(ratio * 100)}"
    config = prune.ChannelConfig(ratio=ratio)

    def build():
        evaluate = comp.top1_evaluator(ctx)
        start = time.perf_counter()
        pruned = prune.prune_channels(model, inputs, config)
        facts = {"prune_s": time.perf_counter() - start, "top1_before_finetune": evaluate(pruned.eval())}
        facts.update(fine_tune(pruned, comp.finetune_batches(ctx), _prune_finetune(ctx)))
        facts["top1_after_finetune"] = evaluate(pruned.eval())
        model_file, sizes = comp.size_fields(ctx, name, pruned.state_dict(), model, kmeans=True)
        return pruned, {**facts, **sizes, "model_file": str(model_file), "finetune_lr": FINETUNE_LR}

    pruned, facts = comp.CACHE.get(ctx, name, build)
    return pruned, {**facts, **matched_control(model, ctx, _prune_finetune(ctx))}, config


def prune_channels(ratio: float):
    def apply(model, inputs, ctx: VariantContext) -> Runner:
        pruned, facts, config = _pruned_channels(model, inputs, ctx, ratio)
        verify, shapes = prune.channels_verify(model, pruned, config)
        info = {"ratio": ratio, "round_to": config.round_to, "kernels": "dense, on narrower layers"}
        runner = Runner(fn=pruned, model=pruned, verify=verify, info=info, fields=shapes)
        return _finish(runner, {**facts, **_model_facts(pruned, inputs)})

    return apply


def prune_channels_int8(ratio: float):
    def apply(model, inputs, ctx: VariantContext) -> Runner:
        pruned, pruned_facts, config = _pruned_channels(model, inputs, ctx, ratio)
        name = f"prune-channels-{round(ratio * 100)}-int8"
        graph, facts = _static_graph(model, inputs, ctx, name, source=pruned)
        verify_shapes, shapes = prune.channels_verify(model, pruned, config)
        runner = qt.runner_for_graph(graph, inputs, qt.StaticInt8Config(), {"int8_config": "PT2E X86InductorQuantizer"})
        verify_int8 = runner.verify

        def verify() -> None:
            verify_shapes()
            verify_int8()

        runner.verify = verify
        kept = ("top1_before_finetune", "top1_after_finetune", "finetune_steps", *CONTROL_FIELDS)
        carried = {k: pruned_facts[k] for k in kept}
        pruned_mb = {"pruned_size_mb": pruned_facts["size_fp32_mb"] / pruned_facts["size_ratio"]}
        facts = {**facts, "build_s": facts["build_s"] + pruned_facts["build_s"], **carried, **pruned_mb}
        return _finish(runner, {**facts, **shapes, **_model_facts(pruned, inputs)})

    return apply


def sparse_2to4(model, inputs, ctx: VariantContext) -> Runner:
    return qt.apply_semi_structured(model, inputs, qt.SemiStructuredConfig(device=ctx.device, dtype=ctx.dtype))


# ------------------------------------------------------------------------------------------- distillation


def distilled(teacher_name: str):
    def apply(model, inputs, ctx: VariantContext) -> Runner:
        """The same architecture trained the profile's way with a KD loss from the teacher (the profile's trained
        `teacher_name`); its row also carries the student trained alone (same data, same budget) and both students'
        latency against the teacher's, measured here at this batch."""
        from nn_speedups.measure import timing
        from nn_speedups.measure.accuracy import trained_checkpoint
        from nn_speedups.measure.protocol import measure_rounds
        from nn_speedups.models import build_model, get_spec

        def build():
            with torch.inference_mode(False):  # training runs here when the checkpoints are not cached yet
                return train_and_load()

        def train_and_load():
            teacher_ckpt = trained_checkpoint(teacher_name, ctx.image_size, ctx.device, ctx.data, **TEACHER_RECIPE)
            kd = {"teacher": str(teacher_ckpt), "kd_temperature": KD_TEMPERATURE, "kd_alpha": KD_ALPHA}
            student_ckpt = trained_checkpoint(ctx.spec.name, ctx.image_size, ctx.device, ctx.data, **kd)
            alone_ckpt = trained_checkpoint(ctx.spec.name, ctx.image_size, ctx.device, ctx.data)
            evaluate = comp.top1_evaluator(ctx)
            student = build_model(ctx.spec, ctx.image_size, weights=str(student_ckpt)).to(ctx.device)
            teacher = build_model(get_spec(teacher_name), ctx.image_size, weights=str(teacher_ckpt)).to(ctx.device)
            alone = build_model(ctx.spec, ctx.image_size, weights=str(alone_ckpt)).to(ctx.device)
            alone_top1 = evaluate(alone)
            facts = {
                "reference_top1": alone_top1,  # the accuracy criterion compares with the student trained alone
                "reference_kind": "control: the student trained alone, same data and budget",
                "student_alone_top1": alone_top1,
                "teacher_top1": evaluate(teacher),
                "teacher": teacher_name,
                "student_checkpoint": str(student_ckpt),
                "teacher_checkpoint": str(teacher_ckpt),
                **kd,
            }
            return (student, teacher), facts

        (student, teacher), facts = comp.CACHE.get(ctx, f"distilled-from-{teacher_name}", build)
        sync = timing.synchronizer(ctx.device)
        teacher_ms = measure_rounds(lambda: teacher(*inputs), sync, ctx.profile).median_ms
        student_ms = measure_rounds(lambda: student(*inputs), sync, ctx.profile).median_ms
        latency = {
            "teacher_median_ms": teacher_ms,
            "student_median_ms": student_ms,
            "student_speedup_vs_teacher": teacher_ms / student_ms,
        }
        return _finish(Runner(fn=student, model=student), {**facts, **latency})

    return apply


# ------------------------------------------------------------------------------------------- the matrix


CODING_MAX_PARAMS = 50_000_000  # the uncompressed rows code their weights only below this (bert-base: ~1 min)


def _fp32_facts(model, ctx: VariantContext) -> dict:
    """The uncompressed model's file and what weight coding alone makes of it (cached): the rows every
    compression is read against."""

    def build():
        params = sum(p.numel() for p in model.parameters())
        if params > CODING_MAX_PARAMS:
            path = comp.fp32_file(ctx, model)
            mb = path.stat().st_size / metrics.MB
            facts = {"model_file": str(path.resolve()), "size_fp32_mb": mb, "size_ratio": 1.0}
            return None, {**facts, "coding": "skipped: large model"}
        model_file, sizes = comp.size_fields(ctx, "fp32", model.state_dict(), model)
        return None, {**sizes, "model_file": str(model_file)}

    return comp.CACHE.get(ctx, "fp32", build)[1]


def eager_reference(model, inputs, ctx: VariantContext) -> Runner:
    return _finish(Runner(fn=model, model=model), _fp32_facts(model, ctx))


def compiled_reference(model, inputs, ctx: VariantContext) -> Runner:
    return _finish(compile_runner(model, inputs, ctx), _fp32_facts(model, ctx))


INT8 = dict(dtype="int8", marks=("torchao",), vs_compiled=True)
PRUNED = dict(check="accuracy", trained_only=True, vs_compiled=True)

VARIANTS = [
    Variant("eager", eager_reference, check="exact", vs_compiled=True),
    # The compiled fp32 reference of speedup_vs_compiled: runs in every profile in this family (compiles=False).
    Variant("compile", compiled_reference, check="exact"),
    Variant("pt-int8-static", pt_int8_static, check="lossy", only="conv", **INT8),
    Variant("pt-int8-dynamic", pt_int8_dynamic, check="lossy", only="nlp", **INT8),
    Variant("pt-int8-qat", pt_int8_qat, only="conv", **{**INT8, **PRUNED, "marks": ("torchao", "cpu")}),
    Variant("prune-unstructured-50", prune_unstructured(0.5), **PRUNED),
    Variant("prune-channels-30", prune_channels(0.3), only="conv", marks=("pruning",), **PRUNED),
    Variant("prune-channels-50", prune_channels(0.5), only="conv", marks=("pruning",), **PRUNED),
    Variant(
        "prune-channels-30-int8",
        prune_channels_int8(0.3),
        only="conv",
        dtype="int8",
        marks=("pruning", "torchao", "cpu"),
        **PRUNED,
    ),
    Variant(
        "sparse-2to4",
        sparse_2to4,
        check="accuracy",
        dtype="fp16",
        only="nlp",
        marks=("gpu", "sm80", "torchao"),
        vs_compiled=True,
    ),  # fmt: skip
]

DISTILL_VARIANTS = [
    Variant(f"distilled-from-{DISTILL_TEACHER}", distilled(DISTILL_TEACHER), marks=("slow",), **PRUNED),
]


@matrix(VARIANTS)
def test_compression(case, measure):
    measure(case)


@matrix(DISTILL_VARIANTS, models=["resnet18", "mobilenet_v3_large"])
def test_distillation(case, measure):
    measure(case)

"""Correctness before timing: every criterion (exact, lowp, lossy, accuracy) and every threshold, in one table.

- exact: numerics-preserving variants; elementwise |out - ref| <= atol + rtol * |ref| with rtol keyed by dtype and
  atol = max(the dtype's share of the output's largest magnitude, EXACT_ULPS x the dtype's resolution (eps) x
  max(1, that magnitude)), per output tensor (not one scale for a tuple of outputs of different sizes): whole
  networks with random weights have logits of any scale, and an output whose values are all tiny must not count
  float rounding (one float32 ulp at 1.0 is 1.19e-07) as a mismatch. The relative difference is reported only
  where the reference is not zero.
- lowp: reduced-precision variants; cosine similarity with the fp32 reference >= 0.99 for whole networks.
- lossy: INT8, pruning, approximate activations; SQNR >= 20 dB (and top-1 agreement where it is a classifier).
- accuracy: variants that change the function on purpose (channel or magnitude pruning with or without a
  fine-tune, distillation): their outputs are not meant to match eager's, so they are judged where it matters, by
  top-1 on labelled evaluation images that no fine-tune or calibration ever saw. The row reports `top1_drop` against
  its `reference_top1`: the variant's own reference where it has one (a matched control fine-tuned the same steps,
  the student trained alone for a distilled one), else the uncompressed model. The check that fails a case asks
  only "is it broken?": at most ACCURACY_MAX_TOP1_DROP below the lower of that reference and the uncompressed
  model as loaded, so a real trade-off (a pruned model losing 19 points to its control) is reported, not hidden
  behind a failure. Output error against eager (SQNR, cosine) is reported, not gated.
  Without labels (2:4 sparse BERT) the variant's kernels must match the same pruned model run with dense kernels:
  `kernel_cosine` >= LOWP_MIN_COSINE. That the pruning engaged (real sparsity, really narrower layers) is each
  variant's verify().
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# dtype -> (rtol, atol relative to the reference's largest magnitude)
EXACT_TOLERANCE = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-3, 1e-4),
    torch.bfloat16: (1.6e-2, 1e-2),
    torch.float16: (1e-3, 1e-3),
}
# the atol floor in units of the dtype's resolution (torch.finfo(dtype).eps) at magnitude 1: kernels that reorder
# a float32 sum of O(1) terms (ONNX Runtime's, Inductor's) differ from eager by a few ulps of 1.0 even where the
# output itself is near zero (a text detector's fp32 ONNX Runtime output: 1.19e-07 from eager, outputs below 1e-4);
# 16-bit dtypes: one ulp (their share of the magnitude above is already about one)
EXACT_ULPS = {torch.float64: 8, torch.float32: 8}
LOWP_MIN_COSINE = 0.99
LOSSY_MIN_SQNR_DB = 20.0
# accuracy criterion: a compressed model that loses more than 10 points of top-1 against the uncompressed model as
# loaded (or its own reference, when that is lower) is broken, not a trade-off; the row reports the exact drop against
# its reference (`top1_drop`).
ACCURACY_MAX_TOP1_DROP = 0.10


@dataclass(frozen=True)
class CheckResult:
    criterion: str
    max_abs_err: float
    rel_err: float  # ||out - ref|| / ||ref||
    cosine: float
    sqnr_db: float
    details: dict = field(default_factory=dict)  # criterion-specific figures, e.g. the accuracy criterion's drop

    def as_extra_info(self) -> dict:
        return {
            "check": self.criterion,
            "max_abs_err": self.max_abs_err,
            "rel_err": self.rel_err,
            "cosine": self.cosine,
            "sqnr_db": self.sqnr_db,
            **self.details,
        }


class CorrectnessError(AssertionError):
    pass


def _flat(outputs: object) -> torch.Tensor:
    """One float64 CPU vector from a tensor or a (nested) tuple of tensors."""
    if isinstance(outputs, torch.Tensor):
        return outputs.detach().to("cpu", torch.float64).reshape(-1)
    if isinstance(outputs, (tuple, list)):
        return torch.cat([_flat(o) for o in outputs])
    raise TypeError(f"cannot compare outputs of type {type(outputs).__name__}")


def measure_error(out: object, ref: object, criterion: str) -> CheckResult:
    a, b = _flat(out), _flat(ref)
    if a.shape != b.shape:
        raise CorrectnessError(f"[{criterion}] output shape {tuple(a.shape)} != reference shape {tuple(b.shape)}")
    diff = a - b
    ref_norm = b.norm().item()
    noise = diff.norm().item()
    # cosine by hand: torch's cosine_similarity clamps the norms' product at 1e-8, which breaks tiny outputs
    # (random-weight nets can emit logits near 1e-10)
    norms = a.norm().item() * ref_norm
    cosine = (a @ b).item() / norms if norms > 0 else float(torch.equal(a, b))
    return CheckResult(
        criterion=criterion,
        max_abs_err=diff.abs().max().item() if a.numel() else 0.0,
        rel_err=noise / ref_norm if ref_norm else noise,
        cosine=cosine,
        sqnr_db=math.inf if noise == 0 else 20 * math.log10(ref_norm / noise),
    )


def _tensors(outputs: object) -> list[torch.Tensor]:
    """The output tensors of a tensor or a (nested) tuple of them, each flattened to float64 on the CPU."""
    if isinstance(outputs, torch.Tensor):
        return [outputs.detach().to("cpu", torch.float64).reshape(-1)]
    if isinstance(outputs, (tuple, list)):
        return [t for o in outputs for t in _tensors(o)]
    raise TypeError(f"cannot compare outputs of type {type(outputs).__name__}")


def exact_tolerance(ref: torch.Tensor, dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) of the exact criterion for one flattened reference output (see the module docstring)."""
    rtol, atol_scale = EXACT_TOLERANCE[dtype]
    scale = ref.abs().max().item() if ref.numel() else 0.0
    floor = EXACT_ULPS.get(dtype, 1) * torch.finfo(dtype).eps * max(1.0, scale)
    return rtol, max(atol_scale * scale, floor)


def check_exact(out: object, ref: object, dtype: torch.dtype, label: str = "") -> CheckResult:
    result = measure_error(out, ref, "exact")
    outs, refs = _tensors(out), _tensors(ref)
    if len(outs) != len(refs):
        raise CorrectnessError(f"{label} [exact] {len(outs)} output tensor(s) against eager's {len(refs)}")
    for i, (a, b) in enumerate(zip(outs, refs)):
        which = f" output {i}" if len(refs) > 1 else ""
        if a.shape != b.shape:
            raise CorrectnessError(f"{label} [exact]{which} has {a.numel()} values against eager's {b.numel()}")
        if not torch.isfinite(a).all():
            raise CorrectnessError(f"{label} [exact]{which} output has non-finite values")
        rtol, atol = exact_tolerance(b, dtype)
        diff = (a - b).abs()
        bad = ~(diff <= atol + rtol * b.abs())
        if bad.any():
            worst = int(torch.argmax(torch.where(bad, diff, torch.zeros_like(diff))))
            nonzero = b != 0
            rel = (diff[nonzero] / b[nonzero].abs()).max().item() if nonzero.any() else float("nan")
            raise CorrectnessError(
                f"{label} [exact]{which} differs from eager in {int(bad.sum())} of {b.numel()} values beyond "
                f"atol {atol:.3g} + rtol {rtol} x |ref|: greatest absolute difference {diff.max().item():.3g} "
                f"(at index {worst}: {a[worst].item():.6g} vs {b[worst].item():.6g}), greatest relative difference "
                f"{rel:.3g} where eager's value is not zero; rel err of the whole {result.rel_err:.3g}"
            )
    return result


def degenerate(out: object, ref: object) -> str:
    """What is wrong with an output that collapsed ("; the output is all zeros" or "...constant ..."), else ""."""
    a, b = _flat(out), _flat(ref)
    if a.numel() < 2:
        return ""
    if not torch.isfinite(a).all():
        return f"; the output has {int((~torch.isfinite(a)).sum())} non-finite values"
    if not a.any():
        return "; the output is all zeros" + ("" if b.any() else " (so is eager's)")
    if bool((a == a[0]).all()) and not bool((b == b[0]).all()):
        return f"; the output is constant (every value {a[0].item():.6g}), eager's is not"
    return ""


def check_lowp(out: object, ref: object, dtype: torch.dtype | None = None, label: str = "") -> CheckResult:
    result = measure_error(out, ref, "lowp")
    if not math.isfinite(result.cosine) or result.cosine < LOWP_MIN_COSINE:
        raise CorrectnessError(
            f"{label} [lowp] cosine similarity with the fp32 reference {result.cosine:.5f} < {LOWP_MIN_COSINE} "
            f"(rel err {result.rel_err:.3g}, max abs err {result.max_abs_err:.3g}){degenerate(out, ref)}"
        )
    return result


def check_lossy(out: object, ref: object, dtype: torch.dtype | None = None, label: str = "") -> CheckResult:
    result = measure_error(out, ref, "lossy")
    if not result.sqnr_db >= LOSSY_MIN_SQNR_DB:
        raise CorrectnessError(
            f"{label} [lossy] SQNR {result.sqnr_db:.2f} dB < {LOSSY_MIN_SQNR_DB} dB (cosine {result.cosine:.5f})"
            f"{degenerate(out, ref)}"
        )
    return result


def check_accuracy(out: object, ref: object, accuracy: dict, fields: dict, label: str = "") -> CheckResult:
    """The accuracy criterion (see the module docstring). `accuracy`: the variant's accuracy fields on evaluation
    images (top1, eager_top1 from nn_speedups.measure.accuracy.evaluate); `fields`: what the variant measured of itself
    (`reference_top1` to compare with instead of eager's, or `kernel_cosine` for an unlabelled model)."""
    from dataclasses import replace

    result = measure_error(out, ref, "accuracy")
    if accuracy.get("top1") is not None:
        reference = fields.get("reference_top1", accuracy.get("eager_top1"))
        floor = min(r for r in (reference, accuracy.get("eager_top1")) if r is not None)  # "is it broken?"
        drop = reference - accuracy["top1"]
        if not floor - accuracy["top1"] <= ACCURACY_MAX_TOP1_DROP:
            raise CorrectnessError(
                f"{label} [accuracy] top-1 {accuracy['top1']:.1%} on {accuracy.get('eval_images')} held-out images is "
                f"{100 * (floor - accuracy['top1']):.1f} points below {floor:.1%}, the lower of its reference and "
                f"the uncompressed model (allowed {100 * ACCURACY_MAX_TOP1_DROP:.0f}; SQNR vs eager "
                f"{result.sqnr_db:.1f} dB)"
            )
        return replace(result, details={"top1_drop": drop, "reference_top1": reference})
    cosine = fields.get("kernel_cosine")
    if cosine is not None:
        if not cosine >= LOWP_MIN_COSINE:
            raise CorrectnessError(
                f"{label} [accuracy] the sparse kernels' output has cosine {cosine:.5f} with the same pruned model "
                f"run dense (< {LOWP_MIN_COSINE})"
            )
        return replace(result, details={"kernel_cosine": cosine})
    raise CorrectnessError(
        f"{label} [accuracy] nothing to judge it by: it needs trained weights and labelled evaluation images "
        "(--checkpoint, or a model the profile trains), or a kernel_cosine"
    )


def top1_agreement(logits: torch.Tensor, ref_logits: torch.Tensor) -> float:
    return (logits.argmax(-1).cpu() == ref_logits.argmax(-1).cpu()).float().mean().item()


CHECKS = {"exact": check_exact, "lowp": check_lowp, "lossy": check_lossy}


# Training: after TRAINING_CHECK_STEPS steps on one fixed batch from the same weights, a variant's loss must have
# gone down, and its last loss must be within TRAINING_LOSS_RTOL x (eager fp32's first loss) of eager's last loss.
# Scaled by the first loss, not the last: the last approaches 0 as the batch is memorized, where any relative
# difference blows up; reordered fp32 sums drift a little over steps, 16-bit autocast more.
TRAINING_CHECK_STEPS = 4
TRAINING_LOSS_RTOL = {"exact": 0.02, "lowp": 0.10, "lossy": 0.20}


def check_training(losses: list[float], reference: list[float], criterion: str, label: str = "") -> dict:
    """Loss goes down over the steps, and the last loss stays near eager fp32's (see TRAINING_LOSS_RTOL)."""
    if not all(math.isfinite(v) for v in losses):
        raise CorrectnessError(f"{label} [training] non-finite loss: {losses}")
    if not losses[-1] < losses[0]:
        raise CorrectnessError(f"{label} [training] loss did not go down over {len(losses)} steps: {losses}")
    rtol = TRAINING_LOSS_RTOL[criterion]
    drift = abs(losses[-1] - reference[-1]) / abs(reference[0])
    if drift > rtol:
        raise CorrectnessError(
            f"{label} [training] loss after {len(losses)} steps {losses[-1]:.5f} vs eager fp32 {reference[-1]:.5f}: "
            f"difference {drift:.4f} of eager's first loss {reference[0]:.5f} > {rtol}"
        )
    return {"check": f"training-{criterion}", "loss_first": losses[0], "loss_last": losses[-1], "loss_drift": drift}


# Data-parallel training (benches/test_distributed.py): one step from the same weights on the same global batch.
# The loss (the ranks' mean) and the averaged gradient must match one process's within the criterion's tolerance
# (exact: EXACT_TOLERANCE of fp32, the gradient's atol scaled to its largest element; lowp: cosine >= 0.99); so must
# the parameter update, compared by its relative error (AdamW's first update is lr * g / (|g| + eps): where a
# gradient element is near eps, fp32 summation-order noise moves that element's update by up to lr, which only a
# norm-wise comparison absorbs). After the step every rank must hold the same parameters.
DISTRIBUTED_LOSS_RTOL = {"exact": 1e-4, "lowp": 0.05}
DISTRIBUTED_UPDATE_REL_ERR = {"exact": 1e-3}
# lowp: the gradient's cosine is the criterion; AdamW's first update is sign-like, so 16-bit gradient noise flips
# whole small elements of it (bf16 autocast on convnext-seed: gradient cosine 0.99994, update cosine 0.993)
DISTRIBUTED_LOWP_UPDATE_MIN_COSINE = 0.95
DISTRIBUTED_RANK_SPREAD = 0.0  # max |param on rank r - param on rank 0| after the step: ranks hold identical copies


def check_distributed_step(got: dict, ref: dict, criterion: str, rank_spread: float, label: str = "") -> dict:
    """got/ref: {"loss": float, "grads": flat tensor, "update": flat tensor (params after - before)}."""
    loss_err = abs(got["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-12)
    grads = measure_error(got["grads"], ref["grads"], criterion)
    update = measure_error(got["update"], ref["update"], criterion)
    fields = {
        "check": f"distributed-{criterion}",
        "loss_ref": ref["loss"],
        "loss_ddp": got["loss"],
        "loss_rel_err": loss_err,
        "grad_max_abs_err": grads.max_abs_err,
        "grad_rel_err": grads.rel_err,
        "grad_cosine": grads.cosine,
        "update_rel_err": update.rel_err,
        "update_cosine": update.cosine,
        "rank_param_spread": rank_spread,
    }
    numbers = ", ".join(f"{k} {v:.3g}" for k, v in fields.items() if isinstance(v, float))
    problems = []
    if not (loss_err <= DISTRIBUTED_LOSS_RTOL[criterion]):
        problems.append(f"loss differs by {loss_err:.3g} > {DISTRIBUTED_LOSS_RTOL[criterion]}")
    if criterion == "exact":
        try:
            check_exact(got["grads"], ref["grads"], torch.float32, label="gradient")
        except CorrectnessError as error:
            problems.append(str(error).splitlines()[0])
        if not (update.rel_err <= DISTRIBUTED_UPDATE_REL_ERR["exact"]):
            problems.append(f"update rel err {update.rel_err:.3g} > {DISTRIBUTED_UPDATE_REL_ERR['exact']}")
    else:
        for name, result, least in (
            ("gradient", grads, LOWP_MIN_COSINE),
            ("update", update, DISTRIBUTED_LOWP_UPDATE_MIN_COSINE),
        ):
            if not (result.cosine >= least):
                problems.append(f"{name} cosine {result.cosine:.5f} < {least}")
    if not (rank_spread <= DISTRIBUTED_RANK_SPREAD):
        problems.append(f"ranks disagree after the step: max |param - rank 0's| {rank_spread:.3g}")
    if problems:
        raise CorrectnessError(
            f"{label} [distributed-{criterion}] one data-parallel step differs from one process's step on the same "
            f"global batch: {'; '.join(problems)} ({numbers})"
        )
    return fields

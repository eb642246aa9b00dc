"""Op breakdowns: which operators take a step's time, by category, and how many kernels a step runs.

Input is a list of (operator name, microseconds) over the profiled steps, from any source: torch.profiler's events
(CPU self time on a CPU; CUDA kernel time on a GPU), ONNX Runtime's per-node profile, TensorRT's per-layer profile.
Output is one set of fields for every source, so the report can put them in one table.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable

CATEGORIES = ("matmul", "elementwise", "memcpy", "fused", "other")
TOP_OPS = 10
OPS_KEPT = 60  # op_ms_per_step keeps this many ops by time and sums the rest under OTHER_OPS
OTHER_OPS = "(other ops)"

# Inductor's Triton kernels say what they are in their prefix: pointwise, reduction/persistent reduction, template.
_TRITON = {"triton_poi": "elementwise", "triton_red": "other", "triton_per": "other", "triton_tem": "matmul"}
_QDQ = re.compile(r"(de)?quantizelinear|(de)?quantize_per")
_MATMUL = re.compile(
    r"conv(?!ert)|gemm|matmul|linear|(^|[:_])b?mm($|[_.:])|addmm|baddbmm|einsum|scaled_dot_product|attention|"
    r"cutlass|cublas|xmma|cudnn|winograd|implicit_convolve|sm\d\d_|ampere_|hopper_|volta_|turing_"
)
_COPY_FIRST = re.compile(r"reformat|copynode|memcpy|memset|convert_element_type")
_MEMCPY = re.compile(
    r"copy|memcpy|memset|clone|contiguous|(^|[:_])cat($|[_:])|concat|stack|reorder|reformat|shuffle|transpose|"
    r"(^|::)_?to($|_copy)|(^|[:_])cast($|[_:])|pad"
)
_ELEMENTWISE_TOKEN = re.compile(
    r"(^|[:_ ./])(add|sub|mul|div|relu|gelu|silu|sigmoid|tanh|hardswish|hardsigmoid|hardtanh|clamp|clamp_min|"
    r"clamp_max|clip|where|pow|exp|log|sqrt|rsqrt|reciprocal|neg|abs|erf|fill|zero|threshold|elu|leaky_relu|softplus|"
    r"sign|maximum|minimum|eq|ne|ge|gt|le|lt|logical_and|logical_or|bitwise_and|bitwise_not|scale)_?($|[_:.( ])"
)
_ELEMENTWISE_PART = re.compile(r"elementwise|pointwise|activation|gelu|swish|relu|sigmoid|tanh|softplus|mish")
INDUCTOR_CPP_KERNEL = "inductor C++ kernel"


def category(name: str) -> str:
    """matmul (matmul, convolution, attention), elementwise, memcpy (copies, casts, layout changes), fused (generated
    kernels whose content is not in their name), or other (norms, pooling, reductions, softmax, ...)."""
    n = name.lower()
    if n.startswith("qlinear"):  # ONNX Runtime's INT8 ops: QLinearConv, QLinearAdd, QLinearGlobalAveragePool...
        n = n[len("qlinear") :]
    for prefix, kind in _TRITON.items():
        if prefix in n:
            return kind
    if n.startswith(("cpp_fused", INDUCTOR_CPP_KERNEL.lower())) or "myelin" in n or "foreignnode" in n:
        return "fused"
    if _QDQ.search(n):
        return "elementwise"
    if _COPY_FIRST.search(n):  # TensorRT's "Reformatting CopyNode ... to /conv1/Conv" is a copy, not a conv
        return "memcpy"
    if _MATMUL.search(n):
        return "matmul"
    if _MEMCPY.search(n):
        return "memcpy"
    if _ELEMENTWISE_TOKEN.search(n) or _ELEMENTWISE_PART.search(n):
        return "elementwise"
    return "other"


def op_breakdown(op_times: Iterable[tuple[str, float]], steps: int, step_ms: float | None, top: int = TOP_OPS) -> dict:
    """Fields of an op breakdown: `top_ops` (by time), `op_ms_per_step` (by op: the OPS_KEPT longest, the rest
    summed), `<category>_share` (shares of the op time: they sum to 1), `op_ms_per_step_total`, and
    `op_share_of_step` (op time over the step's wall time: what the breakdown accounts for)."""
    per_op: dict[str, float] = defaultdict(float)
    calls: Counter = Counter()
    for name, us in op_times:
        per_op[name] += us
        calls[name] += 1
    steps = max(1, steps)
    total_us = sum(per_op.values())
    shares = dict.fromkeys(CATEGORIES, 0.0)
    for name, us in per_op.items():
        shares[category(name)] += us
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])
    total_ms = total_us / 1e3 / steps
    return {
        "top_ops": [
            {
                "op": name,
                "ms_per_step": us / 1e3 / steps,
                "share": us / total_us if total_us else 0.0,
                "calls_per_step": calls[name] / steps,
                "category": category(name),
            }
            for name, us in ranked[:top]
        ],
        "op_ms_per_step": _kept(ranked, steps),
        **{f"{c}_share": (shares[c] / total_us if total_us else None) for c in CATEGORIES},
        "op_ms_per_step_total": total_ms,
        "op_share_of_step": total_ms / step_ms if step_ms else None,
    }


def _kept(ranked: list[tuple[str, float]], steps: int) -> dict[str, float]:
    kept = {name: round(us / 1e3 / steps, 6) for name, us in ranked[:OPS_KEPT]}
    if len(ranked) > OPS_KEPT:
        kept[OTHER_OPS] = round(sum(us for _, us in ranked[OPS_KEPT:]) / 1e3 / steps, 6)
    return kept


# dtype names in torch.profiler's recorded shapes and in ONNX Runtime's profile -> bytes per element
DTYPE_BYTES = {
    "float": 4, "float32": 4, "double": 8, "float64": 8, "c10::half": 2, "half": 2, "float16": 2,
    "c10::bfloat16": 2, "bfloat16": 2, "long int": 8, "int64": 8, "int": 4, "int32": 4, "short int": 2, "int16": 2,
    "signed char": 1, "int8": 1, "unsigned char": 1, "uint8": 1, "bool": 1, "c10::float8_e4m3fn": 1,
}  # fmt: skip


def tensor_bytes(shape, dtype: str) -> int | None:
    """Bytes of a tensor of `shape` and `dtype` (a profiler dtype string), None when it is not a tensor."""
    size = DTYPE_BYTES.get(str(dtype).lower())
    if size is None or not isinstance(shape, (list, tuple)):
        return None
    if any(isinstance(d, (list, tuple)) for d in shape):  # a list of tensors: sizes unknown per element dtype
        return None
    n = 1
    for d in shape:
        n *= int(d)
    return n * size

"""INT8 in PyTorch with torchao (ONNX Runtime's INT8 is optimizations/quantize.py, another family).

- Static post-training INT8, PT2E flow (CPU): `torch.export.export(model, inputs, strict=True).module()`,
  `X86InductorQuantizer` (per-channel symmetric int8 weights, per-tensor uint8 activations), `prepare_pt2e`,
  calibration batches, `convert_pt2e` (quantize/dequantize ops around float ops in the graph, int8 weights folded),
  then `torch.compile` with Inductor freezing on, scoped to this compilation: freezing is what lets Inductor fuse
  the q/dq patterns into oneDNN int8 convolutions and matmuls (without it INT8 runs slower than fp32).
  Strict export: torch 2.15's default non-strict export names a module called twice (resnet's shared ReLU) once,
  and the X86 quantizer then refuses the merged partition ("Input partition has more than one output node").
- On CUDA, static INT8 uses torchao's GPU configuration instead (`quantize_` with
  Int8DynamicActivationInt8WeightConfig, compiled): Linear layers only; `info` says so.
- Dynamic INT8 (Linear-heavy models such as BERT): `quantize_(model, Int8DynamicActivationInt8WeightConfig())`,
  int8 per-channel weights, activations quantized per token at run time, compiled.
- Quantization-aware training: `prepare_qat_pt2e` on the model exported in training mode (fake-quant with conv-bn
  folding), a fine-tune (nn_speedups.optimizations.finetune), `move_exported_model_to_eval`, `convert_pt2e`, compile as
  above.
- 2:4 semi-structured sparsity of Linear layers (CUDA, compute capability >= 8.0, fp16): a 2-of-4 magnitude mask,
  then torchao's `sparsify_(model, SemiSparseWeightConfig())`, checked against the same masked model run dense.

A model the quantizer cannot handle raises QuantizationError with the library's reason in one line.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from nn_speedups.optimizations.base import NotEngagedError, Runner
from nn_speedups.optimizations.prune import one_line

INSTALL = "pip install -e . (torchao)"
QUANTIZED_OP_PREFIXES = ("quantized_decomposed.", "onednn.q", "torchao.")


class QuantizationError(RuntimeError):
    """The quantizer could not handle this model; the message is the library's reason, on one line."""


def _torchao():
    try:
        import torchao
    except ImportError:
        raise ImportError(f"PyTorch INT8 variants need torchao: {INSTALL}") from None
    return torchao


def torchao_status() -> dict:
    """torchao's version and whether its compiled C++ extensions (the _C*.so files it ships) loaded: torchao loads
    them on import and only logs a warning when one fails (e.g. built for another torch)."""
    import glob
    import os

    torchao = _torchao()
    shipped = sorted(glob.glob(os.path.join(os.path.dirname(torchao.__file__), "_C*.so")))
    loaded = {os.path.realpath(p) for p in torch.ops.loaded_libraries}
    failed = [os.path.basename(p) for p in shipped if os.path.realpath(p) not in loaded]
    if getattr(torchao, "skip_loading_so_files", False):
        state = f"skipped ({getattr(torchao, '_skip_reason', None) or 'torchao chose not to load them'})"
    elif not shipped:
        state = "none shipped in this wheel"
    elif failed:
        state = f"FAILED to load {', '.join(failed)}: torchao's C++/CUDA kernels are unavailable"
    else:
        state = f"loaded ({len(shipped)})"
    import sys

    # torchao then registers meta kernels for its low-bit CPU ops; in wheels without those ops that import fails
    # (logged at debug level only). The INT8 paths here use none of them.
    meta = "registered" if "torchao.csrc_meta_ops" in sys.modules else "not registered (its low-bit CPU ops are absent)"
    version = getattr(torchao, "__version__", "unknown")
    return {"torchao": version, "torchao_extensions": state, "torchao_meta_ops": meta}


# ------------------------------------------------------------------------------------------- PT2E (static, QAT)


def _x86_quantizer(is_qat: bool = False):
    _torchao()
    # Importing the module also registers torchao's Inductor passes for quantized graphs (quant_lift_up as
    # torch._inductor.config.pre_grad_custom_pass, and oneDNN weight prepacking under freezing): torchao's design.
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    return xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=is_qat))


def export_graph(model: nn.Module, example_inputs: tuple, train: bool = False) -> torch.fx.GraphModule:
    """The model captured by torch.export (strict) as a GraphModule with a dynamic batch dimension (so one quantized
    model serves every batch size), in eval mode or, for QAT, in training mode."""
    with torch.inference_mode(False):
        twin = copy.deepcopy(model).train(train)
        # a batch of 1 would be specialized as a constant: export sees at least 2
        inputs = tuple(t.clone() if t.shape[0] > 1 else torch.cat([t, t]) for t in example_inputs)
        batch = torch.export.Dim("batch", min=1, max=65536)
        dynamic = tuple({0: batch} for _ in inputs)
        try:
            return torch.export.export(twin, inputs, dynamic_shapes=dynamic, strict=True).module()
        except Exception as error:  # noqa: BLE001 - export's many error types: this model's case fails, one line
            raise QuantizationError(f"torch.export cannot capture {type(model).__name__}: {one_line(error)}") from None


def quantize_static(model: nn.Module, example_inputs: tuple, calibration: Iterable[tuple]) -> torch.fx.GraphModule:
    """Static INT8 through PT2E with X86InductorQuantizer, calibrated on `calibration` (tuples of model inputs)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = _x86_quantizer()
    graph = export_graph(model, example_inputs)
    with torch.inference_mode(False), torch.no_grad():
        try:
            prepared = prepare_pt2e(graph, quantizer)
        except Exception as error:  # noqa: BLE001 - the quantizer's reason is this model's case failing
            raise QuantizationError(
                f"X86InductorQuantizer cannot quantize {type(model).__name__}: {one_line(error)}"
            ) from None
        batches = 0
        for batch in calibration:
            prepared(*batch)
            batches += 1
        if batches == 0:
            raise ValueError("static INT8 needs at least one calibration batch")
        converted = convert_pt2e(prepared)
    return drop_unused_attributes(converted)


def prepare_qat(model: nn.Module, example_inputs: tuple) -> torch.fx.GraphModule:
    """The model exported in training mode with fake-quant observers (conv-bn folded for training): train it, then
    `convert_qat`."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    quantizer = _x86_quantizer(is_qat=True)
    graph = export_graph(model, example_inputs, train=True)
    with torch.inference_mode(False):
        try:
            return prepare_qat_pt2e(graph, quantizer)
        except Exception as error:  # noqa: BLE001 - the quantizer's reason is this model's case failing
            raise QuantizationError(
                f"prepare_qat_pt2e cannot handle {type(model).__name__}: {one_line(error)}"
            ) from None


def qat_train_mode(prepared: torch.fx.GraphModule) -> None:
    from torchao.quantization.pt2e import move_exported_model_to_train

    move_exported_model_to_train(prepared)


def convert_qat(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    with torch.inference_mode(False), torch.no_grad():
        move_exported_model_to_eval(prepared)
        return drop_unused_attributes(convert_pt2e(prepared))


def drop_unused_attributes(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Remove the tensors the converted graph no longer reads (convert_pt2e leaves the fp32 weights beside the
    folded int8 ones), so the module, its memory and its saved state are the quantized model's only."""
    used = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    for name in [n for n, _ in graph.named_parameters()] + [n for n, _ in graph.named_buffers()]:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            module = graph.get_submodule(owner) if owner else graph
            delattr(module, leaf)
    return graph


def quantized_ops(graph: torch.fx.GraphModule) -> dict[str, int]:
    """Counts of the quantization ops (quantized_decomposed.*) a converted graph holds, by op name."""
    counts: dict[str, int] = {}
    for node in graph.graph.nodes:
        name = str(node.target)
        if node.op == "call_function" and name.startswith(QUANTIZED_OP_PREFIXES):
            counts[name] = counts.get(name, 0) + 1
    return counts


def int8_tensors(state: dict[str, torch.Tensor]) -> int:
    return sum(1 for t in state.values() if isinstance(t, torch.Tensor) and t.dtype in (torch.int8, torch.uint8))


def deployable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """What a deployment of `module` ships: its state dict (for a converted graph: int8 weights, fp32 biases,
    scales and zero points), as plain tensors (torchao's int8 tensor subclasses as their int8 data and scales)."""
    state = {}
    with torch.inference_mode(False):  # detaching a tensor subclass refuses inference mode
        for name, value in module.state_dict().items():
            if type(value) is not torch.Tensor and hasattr(value, "__tensor_flatten__"):
                inner, _ = value.__tensor_flatten__()
                for part in inner:
                    state[f"{name}.{part}"] = getattr(value, part).detach()
            else:
                state[name] = value.detach()
    return state


@dataclass(frozen=True)
class StaticInt8Config:
    device: str = "cpu"
    freezing: bool = True  # Inductor freezing for the compiled INT8 graph (scoped to this compilation)


def _compiled_graph_counter() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compile_frozen(module: nn.Module, example_inputs: tuple, freezing: bool = True, **inductor_options):
    """torch.compile `module` and compile it now, on `example_inputs`, under the caller's grad mode, with Inductor
    freezing (and `inductor_options`) patched in for this compilation only. Returns (compiled, compile_s, verify):
    verify() fails when later calls recompiled (a recompile would run without the patched options) or broke graphs.
    """
    from nn_speedups.optimizations.compile import graph_break_check

    torch._dynamo.reset()
    compiled = torch.compile(module)
    info: dict = {}
    breaks = graph_break_check(info)  # counts what compiles from here on (Dynamo's counters are process-wide)
    start = time.perf_counter()
    # A config patch around the compiling call, not torch.compile(options={"freezing": True}): with torch 2.15 and
    # torchao 0.18 the options route failed here, its onednn.qconv_prepack nodes still fed by graph inputs instead of
    # folded frozen weights, in Inductor's fake-tensor pass (the op has no meta kernel).
    with torch._inductor.config.patch(freezing=freezing, **inductor_options):
        compiled(*example_inputs)
    compile_s = time.perf_counter() - start
    graphs = _compiled_graph_counter()

    def verify() -> None:
        breaks()
        if _compiled_graph_counter() != graphs:
            raise NotEngagedError(
                f"the INT8 graph was compiled again after its build ({_compiled_graph_counter() - graphs} more "
                "graphs): that compilation ran without freezing"
            )

    return compiled, compile_s, verify


def _engaged(graph: torch.fx.GraphModule, state: dict) -> tuple[dict, callable]:
    ops = quantized_ops(graph)
    n_int8 = int8_tensors(state)

    def verify() -> None:
        if not ops or n_int8 == 0:
            raise NotEngagedError(f"the INT8 model holds {sum(ops.values())} quantization ops, {n_int8} int8 tensors")

    return {"quantized_ops": sum(ops.values()), "int8_tensors": n_int8}, verify


def runner_for_graph(graph: torch.fx.GraphModule, example_inputs: tuple, config: StaticInt8Config, facts: dict):
    """The Runner of a converted PT2E graph: compiled with freezing; verify() checks it engaged."""
    state = deployable_state(graph)
    engaged, verify_ops = _engaged(graph, state)
    compiled, compile_s, verify_compiled = compile_frozen(graph, example_inputs, freezing=config.freezing)

    def verify() -> None:
        verify_ops()
        verify_compiled()

    info = {**facts, **engaged, "freezing": config.freezing, **torchao_status()}
    return Runner(fn=compiled, model=graph, verify=verify, info=info, fields={"int8_compile_s": compile_s})


def apply_static(
    model: nn.Module, example_inputs: tuple, config: StaticInt8Config, calibration: Iterable[tuple]
) -> Runner:
    """Static INT8: PT2E with X86InductorQuantizer on a CPU; torchao's GPU INT8 configuration on CUDA."""
    if torch.device(config.device).type == "cuda":
        runner = apply_dynamic(model, example_inputs, DynamicInt8Config(device=config.device))
        runner.info["int8_config"] = (
            "CUDA: torchao Int8DynamicActivationInt8WeightConfig (Linear layers only; PT2E X86InductorQuantizer "
            "lowers to oneDNN, a CPU library)"
        )
        return runner
    start = time.perf_counter()
    calibration = list(calibration)
    graph = quantize_static(model, example_inputs, calibration)
    build_s = time.perf_counter() - start
    facts = {
        "int8_config": "PT2E X86InductorQuantizer (static, per-channel weights)",
        "calibration_batches": len(calibration),
    }
    runner = runner_for_graph(graph, example_inputs, config, facts)
    runner.fields["build_s"] = build_s
    return runner


# ----------------------------------------------------------------------------------------------- dynamic


@dataclass(frozen=True)
class DynamicInt8Config:
    device: str = "cpu"


# torchao's recommended Inductor settings for its int8 tensors (recommended_inductor_config_setter), applied to this
# compilation only instead of process-wide.
TORCHAO_INDUCTOR_OPTIONS = {"force_fuse_int_mm_with_mul": True}


def quantize_dynamic(model: nn.Module) -> nn.Module:
    """A copy of `model` whose Linear weights are torchao Int8Tensors (dynamic per-token activations)."""
    _torchao()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    with torch.inference_mode(False):
        quantized = copy.deepcopy(model).eval()
        try:
            quantize_(quantized, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
        except Exception as error:  # noqa: BLE001 - the library's reason is this model's case failing
            raise QuantizationError(
                f"torchao quantize_ cannot quantize {type(model).__name__}: {one_line(error)}"
            ) from None
    return quantized


def int8_linear_count(model: nn.Module) -> tuple[int, int]:
    """(Linear layers whose weight is a torchao int8 tensor, all Linear layers)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    quantized = [m for m in linears if type(m.weight).__name__.startswith("Int8")]
    return len(quantized), len(linears)


def dynamic_runner(quantized: nn.Module, example_inputs: tuple) -> Runner:
    """The Runner of a `quantize_dynamic` model: compiled (torchao's Inductor options for this compilation only)."""
    n_int8, n_linear = int8_linear_count(quantized)
    compiled, compile_s, verify_compiled = compile_frozen(
        quantized, example_inputs, freezing=False, **TORCHAO_INDUCTOR_OPTIONS
    )

    def verify() -> None:
        if n_int8 == 0:
            raise NotEngagedError(f"no Linear weight became int8 ({n_linear} Linear layers)")
        verify_compiled()

    info = {"int8_config": "torchao Int8DynamicActivationInt8WeightConfig", "int8_linears": n_int8,
            "linears": n_linear, **torchao_status()}  # fmt: skip
    return Runner(fn=compiled, model=quantized, verify=verify, info=info, fields={"int8_compile_s": compile_s})


def apply_dynamic(model: nn.Module, example_inputs: tuple, config: DynamicInt8Config) -> Runner:
    start = time.perf_counter()
    quantized = quantize_dynamic(model)
    build_s = time.perf_counter() - start
    runner = dynamic_runner(quantized, example_inputs)
    runner.fields["build_s"] = build_s
    return runner


# ------------------------------------------------------------------------------------------------ 2:4 sparsity


@dataclass(frozen=True)
class SemiStructuredConfig:
    device: str = "cuda"
    dtype: torch.dtype = torch.float16


def mask_2to4(weight: torch.Tensor) -> torch.Tensor:
    """The 2:4 magnitude mask of a [out, in] weight: in every group of 4 consecutive inputs, the 2 largest |w|."""
    groups = weight.detach().abs().reshape(-1, 4)  # [out * in / 4, 4]
    keep = groups.topk(2, dim=1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, keep, True)
    return mask.reshape(weight.shape)


def prune_2to4(model: nn.Module) -> int:
    """Zero 2 of every 4 weights (the smaller) of each Linear layer whose input width is a multiple of 64 (what the
    sparse kernels take); returns how many layers were masked."""
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.in_features % 64 == 0 and module.out_features % 64 == 0:
                module.weight.mul_(mask_2to4(module.weight))
                count += 1
    return count


def apply_semi_structured(model: nn.Module, example_inputs: tuple, config: SemiStructuredConfig) -> Runner:
    """2:4 sparse Linear layers in fp16 on CUDA: masked, converted with torchao sparsify_, and checked against the
    same masked model run with dense kernels (`kernel_cosine`)."""
    if torch.device(config.device).type != "cuda":
        raise NotEngagedError("2:4 semi-structured sparsity needs a CUDA device (compute capability >= 8.0)")
    _torchao()
    from torchao.sparsity import SemiSparseWeightConfig, sparsify_

    start = time.perf_counter()
    with torch.inference_mode(False):
        dense = copy.deepcopy(model).to(config.device, config.dtype).eval()
        masked = prune_2to4(dense)
        sparse = copy.deepcopy(dense)

        def linear_filter(module: nn.Module, fqn: str) -> bool:
            return isinstance(module, nn.Linear) and module.in_features % 64 == 0 and module.out_features % 64 == 0

        try:
            sparsify_(sparse, SemiSparseWeightConfig(), filter_fn=linear_filter)
        except Exception as error:  # noqa: BLE001 - the library's reason is this model's case failing
            raise QuantizationError(
                f"torchao sparsify_ cannot handle {type(model).__name__}: {one_line(error)}"
            ) from None
    with torch.inference_mode():
        reference = dense(*example_inputs).float().flatten()
        out = sparse(*example_inputs).float().flatten()
    cosine = float(reference @ out / (reference.norm() * out.norm()))
    n_sparse = sum(
        1 for m in sparse.modules() if isinstance(m, nn.Linear) and "SemiStructured" in type(m.weight).__name__
    )

    def verify() -> None:
        if n_sparse == 0:
            raise NotEngagedError(f"no Linear weight became a 2:4 sparse tensor ({masked} masked)")

    del dense
    info = {"sparse_linears": n_sparse, "masked_linears": masked, **torchao_status()}
    fields = {"kernel_cosine": cosine, "build_s": time.perf_counter() - start, "sparsity": 0.5}
    return Runner(fn=sparse, model=sparse, verify=verify, info=info, fields=fields)

"""ONNX export, ONNX Runtime sessions and INT8 quantization, on small real models."""

from dataclasses import replace

import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from nn_speedups.core.capabilities import has_cuda
from nn_speedups.measure.correctness import check_exact, check_lossy
from nn_speedups.optimizations import onnxruntime as ort_
from nn_speedups.optimizations import quantize
from nn_speedups.optimizations.base import NotEngagedError
from nn_speedups.optimizations.onnx_export import ExportConfig, ExportError, export, op_counts


def small_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip


@pytest.fixture
def exported(tmp_path):
    model = small_convnet()
    inputs = (torch.randn(1, 3, 32, 32),)  # batch 1: the exporter is given a batch of 2 to keep the dim dynamic
    return model, inputs, export(model, inputs, ExportConfig(name="small", cache_dir=str(tmp_path)))


def test_export_has_external_data_a_dynamic_batch_and_passes_the_checker(exported):
    model, _, artifact = exported
    assert artifact.path.suffix == ".onnx" and len(artifact.files) == 2  # graph + external weights
    graph = onnx.load(str(artifact.path), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert artifact.size_bytes == sum(f.stat().st_size for f in artifact.files) >= weights
    assert artifact.path.stat().st_size < weights  # the graph file alone is not the model size (seed 004's 1.1 MB)
    dim0 = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    onnx.checker.check_model(str(artifact.path))


def test_ort_cpu_matches_eager_at_other_batch_sizes(exported):
    model, inputs, artifact = exported
    runner = ort_.apply(model, inputs, ort_.OrtConfig(provider="cpu", intra_op_threads=1), artifact)
    assert runner.info["provider"] == "CPUExecutionProvider" and runner.info["intra_op_threads"] == 1
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        with torch.inference_mode():
            check_exact(runner(*runner.prepare((x,))), model(x), torch.float32)


def test_cached_export_is_reused_and_a_corrupt_one_rebuilt(exported, tmp_path):
    model, inputs, first = exported
    again = export(model, inputs, ExportConfig(name="small", cache_dir=str(tmp_path)))
    assert again.cached and again.sha256 == first.sha256
    data_file = first.files[1]
    data_file.write_bytes(data_file.read_bytes()[:-8])  # truncated weights
    rebuilt = export(model, inputs, ExportConfig(name="small", cache_dir=str(tmp_path)))
    assert not rebuilt.cached and rebuilt.sha256 == first.sha256
    with torch.no_grad():
        model[0].bias.add_(1.0)  # other weights: another key, another artifact
    changed = export(model, inputs, ExportConfig(name="small", cache_dir=str(tmp_path)))
    assert not changed.cached and changed.path.parent != first.path.parent


def test_fp16_export_halves_the_weights(exported, tmp_path):
    model, inputs, fp32 = exported
    fp16 = export(model, inputs, ExportConfig(name="small", dtype="fp16", cache_dir=str(tmp_path)))
    weights = lambda a: sum(f.stat().st_size for f in a.files[1:])  # noqa: E731 - the external data files
    assert weights(fp16) < 0.6 * weights(fp32)
    session = onnxruntime.InferenceSession(str(fp16.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float16)"


def test_operator_chart_counts_op_types(exported):
    counts = op_counts(exported[2].path)
    assert counts["Conv"] == 2 and counts["Relu"] == 2 and sum(counts.values()) >= 6
    assert list(counts.values()) == sorted(counts.values(), reverse=True)


def test_graph_optimization_levels_all_run_and_agree(exported):
    model, inputs, artifact = exported
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x)
    for level in ort_.GRAPH_LEVELS:
        runner = ort_.apply(model, inputs, ort_.OrtConfig(graph_level=level), artifact)
        check_exact(runner(*runner.prepare((x,))), ref, torch.float32, label=level)
    with pytest.raises(ValueError, match="valid: disabled, basic, extended, all"):
        ort_.session_options(ort_.OrtConfig(graph_level="max"))


def test_cuda_provider_without_cuda_is_refused(exported):
    if has_cuda():
        pytest.skip("this machine has CUDA")
    model, inputs, artifact = exported
    with pytest.raises(RuntimeError, match="needs a CUDA device|has no CUDAExecutionProvider"):
        ort_.apply(model, inputs, ort_.OrtConfig(provider="cuda"), artifact)


def test_static_int8_holds_quantized_ops_and_stays_close(exported, tmp_path):
    model, inputs, artifact = exported
    torch.manual_seed(1)
    feeds = [{"input": torch.randn(8, 3, 32, 32).numpy()} for _ in range(4)]
    x = torch.randn(16, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x)
    for method in ("minmax", "percentile"):
        config = quantize.StaticQuantConfig(method=method, cache_dir=str(tmp_path / "int8"))
        int8 = quantize.quantize_static(artifact, feeds, config)
        counts = op_counts(int8.path)
        assert counts.get("QuantizeLinear", 0) > 0 and counts.get("DequantizeLinear", 0) > 0, counts
        assert int8.size_bytes < 0.6 * artifact.size_bytes  # int8 weights; graph overhead weighs on a tiny net
        runner = ort_.apply(model, inputs, ort_.OrtConfig(), int8)
        check_lossy(runner(*runner.prepare((x,))), ref)
        assert quantize.quantize_static(artifact, feeds, config).cached
    with pytest.raises(ValueError, match="valid: minmax, entropy, percentile"):
        quantize.quantize_static(artifact, feeds, quantize.StaticQuantConfig(method="kl"))


def test_symmetric_int8_for_tensorrt_has_zero_zero_points(exported, tmp_path):
    _, _, artifact = exported
    feeds = [{"input": torch.randn(8, 3, 32, 32).numpy()}]
    config = quantize.StaticQuantConfig(symmetric=True, cache_dir=str(tmp_path / "int8"))
    graph = onnx.load(str(quantize.quantize_static(artifact, feeds, config).path))
    zero_points = [t for t in graph.graph.initializer if "zero_point" in t.name]
    assert zero_points and all(not onnx.numpy_helper.to_array(t).any() for t in zero_points)


def test_dynamic_int8_for_a_transformer_layer(tmp_path):
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, batch_first=True).eval()
    inputs = (torch.randn(2, 16, 64),)
    artifact = export(model, inputs, ExportConfig(name="layer", cache_dir=str(tmp_path)))
    int8 = quantize.quantize_dynamic(artifact, quantize.DynamicQuantConfig(cache_dir=str(tmp_path / "int8")))
    assert quantize.quantized_op_count(op_counts(int8.path)) > 0
    runner = ort_.apply(model, inputs, ort_.OrtConfig(), int8)
    with torch.inference_mode():
        check_lossy(runner(*runner.prepare(inputs)), model(*inputs))


class _Attention(nn.Module):
    """One attention block with its weight MatMuls and its two activation x activation MatMuls (scores, context)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        return self.out(scores @ v)


def test_static_int8_for_a_transformer_quantizes_only_weight_matmuls(tmp_path):
    torch.manual_seed(0)
    model = _Attention().eval()
    inputs = (torch.randn(2, 16, 32),)
    artifact = export(model, inputs, ExportConfig(name="attention", cache_dir=str(tmp_path)))
    feeds = [{"input": torch.randn(4, 16, 32).numpy()} for _ in range(4)]
    for symmetric in (False, True):
        config = quantize.static_config("minmax", quantize.graph_recipe(artifact.path), symmetric=symmetric)
        int8 = quantize.quantize_static(artifact, feeds, replace(config, cache_dir=str(tmp_path / "int8")))
        graph = onnx.load(str(int8.path))
        producers = {out: node.op_type for node in graph.graph.node for out in node.output}
        matmuls = [n for n in graph.graph.node if n.op_type in ("MatMul", "Gemm")]
        fed_by_dq = [all(producers.get(i) == "DequantizeLinear" for i in n.input[:2]) for n in matmuls]
        assert sum(fed_by_dq) == 2, (fed_by_dq, op_counts(int8.path))  # qkv and out projections, not the scores
        assert len(matmuls) == 4
        if symmetric and quantize.saturating_cpu():
            continue  # TensorRT's full-range int8 weights saturate ORT's u8s8 kernels on x86 without VNNI (~15 dB)
        runner = ort_.apply(model, inputs, ort_.OrtConfig(), int8)
        with torch.inference_mode():
            check_lossy(runner(*runner.prepare(inputs)), model(*inputs))


def test_a_model_with_the_fastswish_op_exports_and_runs(tmp_path):
    from nn_speedups.kernels.fastswish_triton import FastSwishTriton

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), FastSwishTriton(), nn.Conv2d(8, 4, 3)).eval()
    inputs = (3 * torch.randn(2, 3, 16, 16),)
    artifact = export(model, inputs, ExportConfig(name="fs", cache_dir=str(tmp_path)))
    runner = ort_.apply(model, inputs, ort_.OrtConfig(), artifact)
    with torch.inference_mode():
        check_exact(runner(*runner.prepare(inputs)), model(*inputs), torch.float32)


@torch.library.custom_op("nn_speedups_test::opaque", mutates_args=())
def opaque(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@opaque.register_fake
def _(x):
    return torch.empty_like(x)


def test_a_failing_export_says_why_in_short(tmp_path):
    class Unsupported(nn.Module):
        def forward(self, x):
            return opaque(x) + 1  # an op with no ONNX translation

    with pytest.raises(ExportError, match=r"ONNX export of bad \(fp32\) failed: .*ConversionError") as error:
        export(Unsupported(), (torch.randn(2, 3),), ExportConfig(name="bad", cache_dir=str(tmp_path)))
    assert "\x1b[" not in str(error.value) and len(str(error.value)) < 700


def test_a_session_that_runs_on_another_provider_than_asked_is_not_engaged(tmp_path, monkeypatch):
    """A provider whose libraries fail to load leaves ONNX Runtime running the graph on the CPU: such a session is
    refused with the provider asked for and the ones it runs on. Here CUDA is asked for (as on a machine that has
    it) and ONNX Runtime hands back a real session on the CPU; the CPU asked for, the same session is accepted."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    path = tmp_path / "relu.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    assert ort_.create_session(path, ort_.OrtConfig()).get_providers()[0] == "CPUExecutionProvider"
    real = onnxruntime.InferenceSession
    monkeypatch.setattr(ort_, "provider_available", lambda provider: None)
    monkeypatch.setattr(ort_, "_provider_entry", lambda config: ort_.PROVIDERS[config.provider])  # no device options
    monkeypatch.setattr(
        onnxruntime, "InferenceSession", lambda path, options, providers: real(path, providers=["CPUExecutionProvider"])
    )
    with pytest.raises(NotEngagedError, match=r"asked for CUDAExecutionProvider, the session runs on \['CPU"):
        ort_.create_session(path, ort_.OrtConfig(provider="cuda"))


def test_calibration_of_a_text_model_uses_token_batches_the_checks_never_see():
    from nn_speedups.matrix.variant import VariantContext
    from nn_speedups.measure.protocol import CALIBRATION_BATCH, CALIBRATION_IMAGES, calibration_feeds
    from nn_speedups.models import get_spec

    spec = get_spec("bert-base")
    feeds = calibration_feeds(VariantContext("cpu", torch.float32, spec, 224, "synthetic"))
    assert len(feeds) == CALIBRATION_IMAGES // CALIBRATION_BATCH
    checked = spec.example_inputs(CALIBRATION_BATCH, 224, "cpu")  # what the benches run and check (seed 0)
    for feed in feeds:
        assert set(feed) == {"input_ids", "attention_mask"} and feed["input_ids"].shape == (CALIBRATION_BATCH, 128)
        assert feed["input_ids"].dtype.kind == "i" and not (feed["input_ids"] == checked[0].numpy()).all()
    assert len({f["input_ids"].tobytes() for f in feeds}) == len(feeds)

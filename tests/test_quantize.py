"""INT8 recipes read from the exported graph (optimizations/quantize.graph_recipe), on small models built here: a
ViT-like transformer block, a conv net, a hybrid, a graph with stale value_info and a tiny Hugging Face classifier.
Each INT8 model must reach LOSSY_MIN_SQNR_DB against the fp32 ONNX model it came from."""

from dataclasses import replace

import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from nn_speedups.measure.correctness import LOSSY_MIN_SQNR_DB, measure_error
from nn_speedups.optimizations import quantize
from nn_speedups.optimizations.onnx_export import ExportConfig, export, op_counts


class TinyViT(nn.Module):
    """Patch embedding (one Conv), a pre-norm encoder block (attention + GELU MLP, LayerNorms), a linear head on the
    mean token."""

    def __init__(self, width: int = 64, heads: int = 4, patch: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(3, width, patch, stride=patch)
        self.norm1, self.norm2, self.norm = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.head = nn.Linear(width, classes)

    def attention(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scores = torch.softmax(q @ k.transpose(-1, -2) * (c // self.heads) ** -0.5, dim=-1)
        return self.proj((scores @ v).transpose(1, 2).reshape(b, t, c))

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = x + self.attention(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.head(self.norm(x).mean(dim=1))


class TinyHybrid(nn.Module):
    """MobileViT-like: conv stages, then attention over the conv features, then a conv and a head."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1, groups=width), nn.Conv2d(width, width, 1), nn.SiLU(),
        )  # fmt: skip
        self.norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 4, batch_first=True)
        self.fuse = nn.Conv2d(width, width, 1)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        n = self.norm(t)
        t = t + self.attn(n, n, n, need_weights=False)[0]
        x = self.fuse(t.transpose(1, 2).reshape(b, c, h, w))
        return self.head(x.mean(dim=(2, 3)))


def small_convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip


def _built(factory, tmp_path, name: str, shape=(1, 3, 32, 32)):
    torch.manual_seed(0)
    model = factory().eval()
    inputs = (torch.randn(*shape),)
    return model, inputs, export(model, inputs, ExportConfig(name=name, cache_dir=str(tmp_path / "onnx")))


def _feeds(shape, count: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [{"input": torch.randn(*shape, generator=generator).numpy()} for _ in range(count)]


def _sqnr(artifact, int8, feed: dict) -> float:
    def run(path):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, feed)[0])

    return measure_error(run(int8.path), run(artifact.path), "lossy").sqnr_db


def _static(artifact, recipe, tmp_path, shape=(8, 3, 32, 32)):
    config = replace(quantize.static_config("minmax", recipe), cache_dir=str(tmp_path / "int8"))
    return quantize.quantize_static(artifact, _feeds(shape, 4, 1), config)


def _dynamic(artifact, recipe, tmp_path):
    return quantize.quantize_dynamic(artifact, quantize.dynamic_config(recipe, cache_dir=str(tmp_path / "int8")))


def _float_inputs(graph, op_type: str) -> list[bool]:
    """For each `op_type` node: whether its first input comes from a DequantizeLinear (the node runs quantized)."""
    producers = {out: node.op_type for node in graph.node for out in node.output}
    return [producers.get(n.input[0]) == "DequantizeLinear" for n in graph.node if n.op_type == op_type]


def test_a_vit_block_gets_the_transformer_recipe_from_its_graph_without_any_tag(tmp_path):
    _, _, artifact = _built(TinyViT, tmp_path, "vit")  # no ModelSpec, no "nlp" tag: only the graph
    recipe = quantize.graph_recipe(artifact.path)
    assert recipe.name == "transformer" and recipe.op_types == quantize.TRANSFORMER_OPS and recipe.weight_matmuls_only
    assert recipe.per_channel and recipe.dynamic_applies
    assert "2 attention MatMuls" in recipe.kept_float and "Softmax" in recipe.kept_float
    assert "LayerNormalization" in recipe.kept_float and "1 Conv (patch embedding)" in recipe.kept_float
    assert recipe.describe().startswith("transformer: int8 MatMul/Gemm (per-channel weights); float: ")


def test_a_vit_block_static_int8_quantizes_only_weight_matmuls_and_reaches_20_db(tmp_path):
    _, _, artifact = _built(TinyViT, tmp_path, "vit")
    recipe = quantize.graph_recipe(artifact.path)
    int8 = _static(artifact, recipe, tmp_path)
    graph = onnx.load(str(int8.path))
    producers = {out: node.op_type for node in graph.graph.node for out in node.output}
    matmuls = [n for n in graph.graph.node if n.op_type in ("MatMul", "Gemm")]
    weight_fed = [producers.get(n.input[1]) == "DequantizeLinear" for n in matmuls]
    assert sum(weight_fed) == 5 and len(matmuls) == 7  # qkv, proj, 2 MLP, head; not the scores or context
    assert not any(_float_inputs(graph.graph, "Softmax") + _float_inputs(graph.graph, "LayerNormalization"))
    assert not any(_float_inputs(graph.graph, "Conv"))  # the patch embedding stays float
    sqnr = _sqnr(artifact, int8, _feeds((16, 3, 32, 32), 1, 99)[0])
    assert sqnr >= LOSSY_MIN_SQNR_DB, sqnr
    manifest = (int8.path.parent / "manifest.json").read_text()
    assert '"recipe": "transformer"' in manifest


def test_the_conv_recipe_on_a_vit_is_what_the_tag_based_choice_gave_and_is_worse(tmp_path):
    """The recipe a vision transformer got from its tags (every op quantized) is measurably worse here: the graph
    recipe is what lifts it, and the two are cached apart."""
    _, _, artifact = _built(TinyViT, tmp_path, "vit")
    feed = _feeds((16, 3, 32, 32), 1, 99)[0]
    graph = _sqnr(artifact, _static(artifact, quantize.graph_recipe(artifact.path), tmp_path), feed)
    every_op = _static(artifact, quantize.CONV_RECIPE, tmp_path)
    assert any(_float_inputs(onnx.load(str(every_op.path)).graph, "Softmax"))
    assert _sqnr(artifact, every_op, feed) < graph


def test_a_vit_block_dynamic_int8_reaches_20_db(tmp_path):
    _, _, artifact = _built(TinyViT, tmp_path, "vit")
    recipe = quantize.graph_recipe(artifact.path)
    int8 = _dynamic(artifact, recipe, tmp_path)
    counts = op_counts(int8.path)
    assert counts.get("MatMulInteger", 0) + counts.get("DynamicQuantizeMatMul", 0) == 5, counts  # qkv..head
    assert counts["MatMul"] == 2 and counts["Softmax"] == 1  # attention's score and context products stay float
    sqnr = _sqnr(artifact, int8, _feeds((16, 3, 32, 32), 1, 99)[0])
    assert sqnr >= LOSSY_MIN_SQNR_DB, sqnr
    assert quantize.quantize_dynamic(artifact, quantize.dynamic_config(recipe, str(tmp_path / "int8"))).cached
    other = quantize.quantize_dynamic(artifact, quantize.dynamic_config(quantize.CONV_RECIPE, str(tmp_path / "int8")))
    assert not other.cached and other.path.parent != int8.path.parent  # the recipe is in the cache key


def test_a_conv_net_gets_the_every_op_recipe_and_reaches_20_db(tmp_path):
    _, _, artifact = _built(small_convnet, tmp_path, "convnet")
    recipe = quantize.graph_recipe(artifact.path)
    assert recipe.name == "conv" and recipe.op_types == () and recipe.per_channel and not recipe.kept_float
    assert not recipe.dynamic_applies  # Conv and a Gemm head: nothing for ORT's dynamic quantizer
    int8 = _static(artifact, recipe, tmp_path)
    assert all(_float_inputs(onnx.load(str(int8.path)).graph, "Conv"))
    sqnr = _sqnr(artifact, int8, _feeds((16, 3, 32, 32), 1, 99)[0])
    assert sqnr >= LOSSY_MIN_SQNR_DB, sqnr


def test_a_hybrid_quantizes_its_convs_and_weight_matmuls_and_reaches_20_db(tmp_path):
    _, _, artifact = _built(TinyHybrid, tmp_path, "hybrid")
    recipe = quantize.graph_recipe(artifact.path)
    assert recipe.name == "hybrid" and recipe.op_types == quantize.HYBRID_OPS and recipe.weight_matmuls_only
    int8 = _static(artifact, recipe, tmp_path)
    graph = onnx.load(str(int8.path)).graph
    assert all(_float_inputs(graph, "Conv")) and not any(_float_inputs(graph, "Softmax"))
    feed = _feeds((16, 3, 32, 32), 1, 99)[0]
    assert _sqnr(artifact, int8, feed) >= LOSSY_MIN_SQNR_DB
    assert _sqnr(artifact, _dynamic(artifact, recipe, tmp_path), feed) >= LOSSY_MIN_SQNR_DB


class _TokenClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(16, 32), nn.Linear(32, 3)

    def forward(self, x):  # [B, T, 16] -> [B, T, 3]: MatMuls, which ORT's dynamic quantizer takes
        return self.head(torch.relu(self.body(x)))


def test_stale_value_info_does_not_stop_dynamic_int8(tmp_path):
    """An export whose value_info contradicts the graph (as Hugging Face classifiers' do, for the classifier
    weight) stopped ORT's quantizer with a ShapeInferenceError; the pre-processing drops it."""
    _, _, artifact = _built(_TokenClassifier, tmp_path, "stale", shape=(2, 5, 16))
    model = onnx.load(str(artifact.path), load_external_data=False)
    hidden = next(n.output[0] for n in model.graph.node if n.op_type == "Relu")
    weight = next(t for t in model.graph.initializer if list(t.dims) == [3, 32] or list(t.dims) == [32, 3])
    del model.graph.value_info[:]
    model.graph.value_info.extend([
        onnx.helper.make_tensor_value_info(hidden, onnx.TensorProto.FLOAT, [7, 5, 99]),  # wrong: [B, 5, 32]
        onnx.helper.make_tensor_value_info(weight.name, onnx.TensorProto.FLOAT, [5, 5]),  # wrong: the weight's
    ])  # fmt: skip
    onnx.save(model, str(artifact.path))  # the external data file stays where it is
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    with pytest.raises(Exception, match="ShapeInferenceError|Inferred shape"):  # what the dynamic path did before
        ort_quantize_dynamic(str(artifact.path), str(tmp_path / "plain.onnx"))
    recipe = quantize.graph_recipe(artifact.path)
    assert recipe.name == "dense" and recipe.dynamic_applies
    int8 = _dynamic(artifact, recipe, tmp_path)
    assert quantize.quantized_op_count(op_counts(int8.path)) > 0
    assert _sqnr(artifact, int8, _feeds((4, 5, 16), 1, 99)[0]) >= LOSSY_MIN_SQNR_DB


def test_int8_weights_are_7_bit_where_the_cpu_saturates_and_the_range_is_in_the_cache_key():
    recipe = quantize.TRANSFORMER_RECIPE
    assert quantize.static_config("minmax", recipe).reduce_range == quantize.saturating_cpu()
    assert not quantize.static_config("minmax", recipe, symmetric=True).reduce_range  # TensorRT's: full range
    assert quantize.dynamic_config(recipe).reduce_range == quantize.saturating_cpu()
    assert "reduce_range" in quantize.asdict(quantize.dynamic_config(recipe))  # asdict(config) keys the cache


def test_a_tiny_hugging_face_classifier_quantizes_static_and_dynamic(tmp_path):
    transformers = pytest.importorskip("transformers")

    class Logits(nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids).logits

    config = transformers.BertConfig(
        vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Logits(transformers.BertForSequenceClassification(config)).eval()
    inputs = (torch.randint(0, 500, (1, 16)),)
    artifact = export(model, inputs, ExportConfig(name="bert", input_names=("input_ids",), cache_dir=str(tmp_path)))
    recipe = quantize.graph_recipe(artifact.path)
    assert recipe.name == "transformer" and "embedding Gathers" in recipe.kept_float
    generator = torch.Generator().manual_seed(5)
    ids = lambda n: {"input_ids": torch.randint(0, 500, (n, 16), generator=generator).numpy()}  # noqa: E731
    feed = ids(8)
    dynamic = _dynamic(artifact, recipe, tmp_path)  # the ShapeInferenceError of issue 27 was here
    assert _sqnr(artifact, dynamic, feed) >= LOSSY_MIN_SQNR_DB
    config = replace(quantize.static_config("minmax", recipe), cache_dir=str(tmp_path / "int8"))
    static = quantize.quantize_static(artifact, [ids(8) for _ in range(4)], config)
    assert _sqnr(artifact, static, feed) >= LOSSY_MIN_SQNR_DB

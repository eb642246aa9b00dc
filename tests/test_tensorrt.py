"""optimizations/tensorrt.py: the pure helpers (profile shapes, cache keys, precision selection, ONNX inspection)
everywhere; the real engine (build, caches, execution on torch's stream) where tensorrt and a CUDA device exist.

    pytest tests/test_tensorrt.py -q                   # the helpers run anywhere; -m "trt and gpu" for the engine
"""

import hashlib
import json
import re
import subprocess
import sys

import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from torch import nn

from nn_speedups.core.capabilities import has_module
from nn_speedups.measure.correctness import check_exact, check_lowp
from nn_speedups.optimizations import tensorrt as trt_opt
from nn_speedups.optimizations.tensorrt import (
    PrecisionPlan,
    TrtConfig,
    engine_cache_key,
    network_profile,
    precision_plan,
    profile_shapes,
    sha256_file,
    timing_cache_path,
)
from tests.conftest import ROOT

SHA = "ab" * 32
SHAPES = {"input": ((1, 3, 16, 16), (8, 3, 16, 16), (64, 3, 16, 16))}
KEY_ARGS = dict(
    onnx_sha256=SHA,
    trt_version="10.13.0.35",
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability="9.0",
    precision="fp16",
    shapes=SHAPES,
)


# ---------------------------------------------------------------------------------------------------------------------
# TrtConfig


def test_config_defaults_and_frozen():
    config = TrtConfig()
    assert (config.precision, config.min_batch, config.opt_batch, config.max_batch) == ("fp16", 1, 8, 64)
    assert config.workspace_bytes == 4 << 30 and config.cache_dir == "artifacts/tensorrt"
    with pytest.raises(AttributeError):
        config.precision = "fp32"


# ---------------------------------------------------------------------------------------------------------------------
# profile_shapes / network_profile


def test_profile_shapes_replaces_dim0_with_the_three_batches():
    got = profile_shapes({"x": (4, 3, 224, 224), "mask": (4, 128)}, 1, 8, 64)
    assert got == {
        "x": ((1, 3, 224, 224), (8, 3, 224, 224), (64, 3, 224, 224)),
        "mask": ((1, 128), (8, 128), (64, 128)),
    }


@pytest.mark.parametrize(
    "batches, message",
    [
        ((0, 8, 64), "1 <= min_batch"),
        ((-1, 1, 1), "1 <= min_batch"),
        ((4, 2, 64), "min=4 opt=2"),
        ((1, 65, 64), "opt=65 max=64"),
        ((2, 2, 1), "max=1"),
        ((1.0, 8, 64), "integers"),
        ((True, 8, 64), "integers"),
    ],
    ids=["min0", "negative", "opt<min", "opt>max", "max<min", "float", "bool"],
)
def test_profile_shapes_rejects_bad_batches(batches, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        profile_shapes({"x": (2, 3)}, *batches)


def test_profile_shapes_rejects_scalars_and_empty_dims():
    with pytest.raises(ValueError, match="scalar"):
        profile_shapes({"x": ()}, 1, 1, 1)
    with pytest.raises(ValueError, match="non-batch dimensions must be positive"):
        profile_shapes({"x": (2, 0, 3)}, 1, 1, 1)


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.dictionaries(
        st.text("abcxyz_", min_size=1, max_size=6),
        st.lists(st.integers(1, 512), min_size=1, max_size=5).map(tuple),
        min_size=1,
        max_size=4,
    ),
    batches=st.lists(st.integers(1, 4096), min_size=3, max_size=3).map(sorted),
)
def test_profile_shapes_property(shapes, batches):
    got = profile_shapes(shapes, *batches)
    assert set(got) == set(shapes)
    for name, triple in got.items():
        assert [s[0] for s in triple] == batches
        assert all(s[1:] == shapes[name][1:] for s in triple)


def test_network_profile_dynamic_batch_static_input_and_other_dynamic_dims():
    network = {"img": (-1, 3, -1, -1), "scale": (1, 4)}
    examples = {"img": (2, 3, 32, 48), "scale": (1, 4)}
    got = network_profile(network, examples, 1, 4, 16)
    assert got["img"] == ((1, 3, 32, 48), (4, 3, 32, 48), (16, 3, 32, 48))
    assert got["scale"] == ((1, 4), (1, 4), (1, 4))


@pytest.mark.parametrize(
    "examples, message",
    [
        ({"img": (2, 3, 8, 8)}, "missing ['scale']"),
        ({"img": (2, 3, 8, 8), "scale": (1, 4), "extra": (1,)}, "unknown ['extra']"),
        ({"img": (2, 3, 8), "scale": (1, 4)}, "rank"),
        ({"img": (2, 3, 8, 8), "scale": (1, 5)}, "differs"),
    ],
    ids=["missing", "unknown", "rank", "static-clash"],
)
def test_network_profile_rejects_mismatches(examples, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        network_profile({"img": (-1, 3, -1, -1), "scale": (1, 4)}, examples, 1, 4, 16)


# ---------------------------------------------------------------------------------------------------------------------
# engine_cache_key / timing_cache_path


def test_engine_key_is_a_stable_sha256_hex_digest():
    key = engine_cache_key(**KEY_ARGS)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert key == engine_cache_key(**KEY_ARGS)
    # Pinned: a change of the key scheme must be deliberate (bump CACHE_SCHEMA), since it orphans every cached engine.
    fields = {k: v for k, v in KEY_ARGS.items() if k != "shapes"}
    fields.update(schema=trt_opt.CACHE_SCHEMA, shapes={"input": [list(s) for s in SHAPES["input"]]})
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    assert key == hashlib.sha256(text.encode()).hexdigest()


def test_engine_key_is_the_same_in_a_fresh_interpreter():
    code = (
        "from nn_speedups.optimizations.tensorrt import engine_cache_key as k;"
        f"print(k({KEY_ARGS['onnx_sha256']!r}, '10.13.0.35', 'NVIDIA H100 80GB HBM3', '9.0', 'fp16', {SHAPES!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == engine_cache_key(**KEY_ARGS)


@pytest.mark.parametrize(
    "field, value",
    [
        ("onnx_sha256", "cd" * 32),
        ("trt_version", "10.13.0.36"),
        ("trt_version", "11.0.0"),
        ("gpu_name", "NVIDIA H200"),
        ("compute_capability", "8.9"),
        ("precision", "fp32"),
        ("precision", "int8"),
        ("shapes", {"input": ((1, 3, 16, 16), (8, 3, 16, 16), (32, 3, 16, 16))}),
        ("shapes", {"input": ((1, 3, 16, 16), (4, 3, 16, 16), (64, 3, 16, 16))}),
        ("shapes", {"input": ((2, 3, 16, 16), (8, 3, 16, 16), (64, 3, 16, 16))}),
        ("shapes", {"input": ((1, 3, 32, 32), (8, 3, 32, 32), (64, 3, 32, 32))}),
        ("shapes", {"image": SHAPES["input"]}),
        ("shapes", {**SHAPES, "mask": ((1, 4), (8, 4), (64, 4))}),
    ],
)
def test_engine_key_changes_with_every_input(field, value):
    assert engine_cache_key(**{**KEY_ARGS, field: value}) != engine_cache_key(**KEY_ARGS)


def test_engine_key_does_not_mix_fields_up():
    """Values that concatenate alike in different fields still give different keys."""
    a = engine_cache_key(**{**KEY_ARGS, "gpu_name": "A1", "compute_capability": "00.0"})
    b = engine_cache_key(**{**KEY_ARGS, "gpu_name": "A10", "compute_capability": "0.0"})
    assert a != b


@settings(max_examples=40, deadline=None)
@given(
    shapes=st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.lists(st.integers(1, 99), min_size=1, max_size=4).map(lambda s: (tuple(s), tuple(s), tuple(s))),
        min_size=1,
        max_size=5,
    ),
    data=st.data(),
)
def test_engine_key_ignores_dict_order_and_tuple_vs_list(shapes, data):
    order = data.draw(st.permutations(list(shapes)))
    shuffled = {name: [list(s) for s in shapes[name]] for name in order}
    assert engine_cache_key(**{**KEY_ARGS, "shapes": shapes}) == engine_cache_key(**{**KEY_ARGS, "shapes": shuffled})


def test_engine_key_rejects_unknown_precision_and_bad_shapes():
    with pytest.raises(ValueError, match="valid: fp32, fp16, int8"):
        engine_cache_key(**{**KEY_ARGS, "precision": "bf16"})
    with pytest.raises(ValueError, match=r"\(min, opt, max\)"):
        engine_cache_key(**{**KEY_ARGS, "shapes": {"input": ((1, 3), (8, 3))}})


def test_timing_cache_path_is_readable_and_under_the_cache_dir(tmp_path):
    path = timing_cache_path(tmp_path, "10.13.0.35", "NVIDIA GeForce RTX 4090", "8.9")
    assert path.parent == tmp_path and path.suffix == ".cache"
    assert "trt10.13.0.35" in path.name and "nvidia-geforce-rtx-4090" in path.name and "sm8.9" in path.name
    assert path == timing_cache_path(str(tmp_path), "10.13.0.35", "NVIDIA GeForce RTX 4090", "8.9")


@pytest.mark.parametrize(
    "args",
    [
        ("10.13.0.36", "NVIDIA GeForce RTX 4090", "8.9"),
        ("10.13.0.35", "NVIDIA H100", "8.9"),
        ("10.13.0.35", "NVIDIA GeForce RTX 4090", "9.0"),
        ("10.13.0.35", "NVIDIA GeForce RTX-4090", "8.9"),  # same slug, different GPU name
        ("10.13.0.35", "nvidia geforce rtx 4090", "8.9"),
    ],
)
def test_timing_cache_path_differs_per_version_gpu_and_capability(tmp_path, args):
    assert timing_cache_path(tmp_path, *args) != timing_cache_path(
        tmp_path, "10.13.0.35", "NVIDIA GeForce RTX 4090", "8.9"
    )


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=30), st.text(max_size=30), st.text(max_size=8))
def test_timing_cache_path_is_a_plain_file_name_for_any_strings(version, gpu, capability):
    path = timing_cache_path("cache", version, gpu, capability)
    assert str(path.parent) == "cache"
    assert re.fullmatch(r"[a-z0-9.\-]+\.cache", path.name), path.name


# ---------------------------------------------------------------------------------------------------------------------
# precision_plan

STRONG_FP32 = PrecisionPlan(strongly_typed=True, builder_flags=(), onnx_variant="fp32", cleared_flags=("TF32",))
WEAK_FP16 = PrecisionPlan(strongly_typed=False, builder_flags=("FP16",), onnx_variant="fp32")
STRONG_FP16 = PrecisionPlan(strongly_typed=True, builder_flags=(), onnx_variant="fp16")
WEAK_INT8 = PrecisionPlan(strongly_typed=False, builder_flags=("INT8", "FP16"), onnx_variant="qdq")
STRONG_INT8 = PrecisionPlan(strongly_typed=True, builder_flags=(), onnx_variant="qdq")


@pytest.mark.parametrize(
    "precision, onnx_dtype, flags, major, expected",
    [
        # TensorRT 10 with the weak-typing flags
        ("fp32", "fp32", True, 10, STRONG_FP32),
        ("fp16", "fp32", True, 10, WEAK_FP16),
        ("fp16", "fp16", True, 10, STRONG_FP16),  # an fp16 ONNX needs no flag
        ("fp16", "qdq", True, 10, WEAK_FP16),
        ("int8", "qdq", True, 10, WEAK_INT8),
        ("int8", "fp32", True, 10, WEAK_INT8),  # int8 needs the QDQ ONNX
        # a TensorRT 10 build without the flags
        ("fp16", "fp32", False, 10, STRONG_FP16),
        ("int8", "qdq", False, 10, STRONG_INT8),
        # TensorRT 11: strongly typed, whatever hasattr says
        ("fp32", "fp32", False, 11, STRONG_FP32),
        ("fp16", "fp32", False, 11, STRONG_FP16),
        ("fp16", "fp32", True, 11, STRONG_FP16),
        ("fp16", "fp16", False, 11, STRONG_FP16),
        ("int8", "qdq", False, 11, STRONG_INT8),
        ("int8", "fp16", True, 12, STRONG_INT8),
    ],
)
def test_precision_plan_table(precision, onnx_dtype, flags, major, expected):
    assert precision_plan(precision, onnx_dtype, flags, major) == expected


def test_precision_plan_rejects_unknown_inputs():
    with pytest.raises(ValueError, match="unknown precision 'bf16'; valid: fp32, fp16, int8"):
        precision_plan("bf16", "fp32", True, 10)
    with pytest.raises(ValueError, match="valid: fp32, fp16, qdq"):
        precision_plan("fp16", "int8", True, 10)
    with pytest.raises(ValueError, match="TensorRT >= 10"):
        precision_plan("fp16", "fp32", True, 8)


@given(
    precision=st.sampled_from(trt_opt.PRECISIONS),
    onnx_dtype=st.sampled_from(trt_opt.ONNX_VARIANTS),
    flags=st.booleans(),
    major=st.integers(10, 20),
)
def test_precision_plan_invariants(precision, onnx_dtype, flags, major):
    plan = precision_plan(precision, onnx_dtype, flags, major)
    assert plan.strongly_typed == (plan.builder_flags == ())
    assert set(plan.builder_flags) <= {"FP16", "INT8"}
    if major >= 11 or not flags:
        assert plan.strongly_typed
        assert plan.onnx_variant == {"fp32": "fp32", "fp16": "fp16", "int8": "qdq"}[precision]
    if precision == "int8":
        assert plan.onnx_variant == "qdq"
    if precision == "fp32":
        assert plan.onnx_variant == "fp32" and "TF32" in plan.cleared_flags


# ---------------------------------------------------------------------------------------------------------------------
# sha256_file and the ONNX helpers, on a real dynamo export (weights in external data)


class SmallConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.features(x))


def small_model() -> nn.Module:
    torch.manual_seed(0)
    model = SmallConvNet().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
    return model


def export(model: nn.Module, path, dtype=torch.float32):
    """torch.onnx.export with the dynamo exporter and a dynamic batch (the example batch must be >= 2)."""
    x = torch.randn(2, 3, 16, 16, dtype=dtype)
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(model.to(dtype), (x,), str(path), dynamo=True, dynamic_shapes=({0: batch},))
    return path


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    return export(small_model(), tmp_path_factory.mktemp("onnx") / "small.onnx")


def test_onnx_helpers_on_a_dynamo_export(fp32_onnx):
    files = trt_opt.onnx_external_files(fp32_onnx)
    assert files[0] == fp32_onnx and len(files) >= 2, files
    assert all(f.is_file() for f in files)
    assert trt_opt.onnx_input_shapes(fp32_onnx) == {"x": (-1, 3, 16, 16)}
    assert trt_opt.onnx_variant(fp32_onnx) == "fp32"


def test_sha256_covers_external_data(fp32_onnx, tmp_path):
    files = trt_opt.onnx_external_files(fp32_onnx)
    copies = []
    for f in files:
        copies.append(tmp_path / f.name)
        copies[-1].write_bytes(f.read_bytes())
    before = sha256_file(copies)
    assert before == sha256_file(files)  # content and names, not directories
    assert before == sha256_file(list(reversed(copies))) == sha256_file([*copies, copies[0]])
    assert before != sha256_file(copies[0])
    data = bytearray(copies[1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    copies[1].write_bytes(bytes(data))
    assert sha256_file(copies) != before


def test_sha256_counts_names_and_rejects_nothing(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(b"graph")
    b.write_bytes(b"graph")
    assert sha256_file(a) != sha256_file(b)
    assert sha256_file(a) == sha256_file(str(a))
    with pytest.raises(ValueError, match="at least one file"):
        sha256_file([])


def _tiny_graph(path, dtype=TensorProto.FLOAT, qdq=False, op="Relu", domain=""):
    """A one-op ONNX graph written by hand (QDQ: x -> QuantizeLinear -> DequantizeLinear -> y)."""
    x = helper.make_tensor_value_info("x", dtype, ["batch", 4])
    y = helper.make_tensor_value_info("y", dtype, ["batch", 4])
    if qdq:
        scale = helper.make_tensor("scale", dtype, [], [0.05])
        zero = helper.make_tensor("zero", TensorProto.INT8, [], [0])
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"]),
        ]
        graph = helper.make_graph(nodes, "qdq", [x], [y], [scale, zero])
    else:
        graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], domain=domain)], "one", [x], [y])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_onnx_variant_tells_fp32_fp16_and_qdq(tmp_path):
    assert trt_opt.onnx_variant(_tiny_graph(tmp_path / "a.onnx")) == "fp32"
    assert trt_opt.onnx_variant(_tiny_graph(tmp_path / "b.onnx", TensorProto.FLOAT16)) == "fp16"
    assert trt_opt.onnx_variant(_tiny_graph(tmp_path / "c.onnx", qdq=True)) == "qdq"
    assert trt_opt.onnx_external_files(tmp_path / "a.onnx") == [tmp_path / "a.onnx"]
    assert trt_opt.onnx_input_shapes(tmp_path / "c.onnx") == {"x": (-1, 4)}  # initializers are not inputs


def test_module_imports_neither_tensorrt_nor_pytest():
    code = "import sys, nn_speedups.optimizations.tensorrt; print(sorted({'tensorrt', 'pytest'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------------------
# without tensorrt: a clear ImportError


@pytest.mark.parametrize(
    "call",
    [
        lambda p: trt_opt.build_engine(p, {"x": (2, 4)}, TrtConfig()),
        lambda p: trt_opt.TrtEngineRunner(b"not an engine"),
        lambda p: trt_opt.apply(None, (torch.zeros(2, 4),), TrtConfig(), [p]),
        lambda p: trt_opt.trt_facts(),
    ],
    ids=["build_engine", "runner", "apply", "trt_facts"],
)
def test_without_tensorrt_the_error_says_how_to_install(call, tmp_path):
    if has_module("tensorrt"):
        pytest.skip("tensorrt is installed: the missing-package error cannot happen here")
    with pytest.raises(ImportError, match=re.escape("needs tensorrt: pip install -e .[trt]")):
        call(_tiny_graph(tmp_path / "a.onnx"))


# ---------------------------------------------------------------------------------------------------------------------
# with tensorrt and a CUDA device: real engines


@pytest.fixture
def no_tf32():
    """Eager references in true fp32 (cuDNN convolutions default to TF32 on Ampere and later)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _eager(x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return small_model().cuda()(x.float())


def _onnx_for(precision: str, fp32_onnx, tmp_path):
    """The ONNX this TensorRT needs for `precision`, exported if it is not the fp32 one."""
    facts = trt_opt.trt_facts()
    plan = precision_plan(precision, "fp32", facts.has_weak_typing_flags, facts.major)
    if plan.onnx_variant == "fp32":
        return fp32_onnx
    if plan.onnx_variant == "fp16":
        return export(small_model(), tmp_path / "small_fp16.onnx", torch.float16)
    pytest.skip(f"{precision} needs a {plan.onnx_variant} ONNX (optimizations/quantize.py)")


def _config(tmp_path, precision, **kw) -> TrtConfig:
    return TrtConfig(precision=precision, min_batch=1, opt_batch=4, max_batch=8, cache_dir=str(tmp_path / "trt"), **kw)


@pytest.mark.trt
@pytest.mark.gpu
def test_fp32_engine_matches_eager_at_several_batches(fp32_onnx, tmp_path, no_tf32):
    x = torch.randn(4, 3, 16, 16, device="cuda")
    runner = trt_opt.apply(small_model().cuda(), (x,), _config(tmp_path, "fp32"), [fp32_onnx])
    assert runner.info["engine_cache_hit"] is False and runner.info["engine_build_s"] > 0
    assert runner.info["strongly_typed"] is True and runner.info["builder_flags"] == ""
    for batch in (4, 1, 7, 8):  # anywhere in the profile, one engine
        inputs = runner.prepare((torch.randn(batch, 3, 16, 16, device="cuda"),))
        out = runner(*inputs)
        torch.cuda.synchronize()
        assert out.dtype == torch.float32 and out.shape == (batch, 10)
        check_exact(out, _eager(inputs[0]), torch.float32, label=f"trt-fp32-bs{batch}")
    runner.verify()
    engine = runner.artifact_files[0]
    assert engine.endswith(".engine") and len(open(engine, "rb").read()) == runner.info["engine_bytes"]


@pytest.mark.trt
@pytest.mark.gpu
def test_fp16_engine_is_close_to_eager(fp32_onnx, tmp_path):
    onnx_path = _onnx_for("fp16", fp32_onnx, tmp_path)
    x = torch.randn(8, 3, 16, 16, device="cuda")
    runner = trt_opt.apply(None, (x,), _config(tmp_path, "fp16"), [onnx_path])
    out = runner(*runner.prepare((x,)))
    torch.cuda.synchronize()
    check_lowp(out, _eager(x), label="trt-fp16")
    runner.verify()  # the inspector shows fp16 layers
    assert runner.info["onnx_variant"] == trt_opt.onnx_variant(onnx_path)


@pytest.mark.trt
@pytest.mark.gpu
def test_precision_that_needs_another_onnx_says_which(tmp_path):
    assert trt_opt.trt_facts().major >= 10
    fp16_graph = _tiny_graph(tmp_path / "h.onnx", TensorProto.FLOAT16)
    with pytest.raises(ValueError, match="needs the fp32 ONNX"):
        trt_opt.build_engine(fp16_graph, {"x": (2, 4)}, _config(tmp_path, "fp32"))
    with pytest.raises(ValueError, match="needs the qdq ONNX"):
        trt_opt.build_engine(_tiny_graph(tmp_path / "a.onnx"), {"x": (2, 4)}, _config(tmp_path, "int8"))


@pytest.mark.trt
@pytest.mark.gpu
def test_second_build_hits_the_engine_cache(fp32_onnx, tmp_path):
    config = _config(tmp_path, "fp32")
    first = trt_opt.load_or_build(fp32_onnx, {"x": (2, 3, 16, 16)}, config)
    second = trt_opt.load_or_build(fp32_onnx, {"x": (5, 3, 16, 16)}, config)  # same profile, same engine
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert second.build_s is None and second.data == first.data and second.path == first.path
    assert trt_opt.build_engine(fp32_onnx, {"x": (2, 3, 16, 16)}, config) == first.data
    sidecar = json.loads(first.path.with_suffix(".json").read_text())
    assert sidecar["precision"] == "fp32" and sidecar["onnx_sha256"] and sidecar["trt_version"]
    facts = trt_opt.trt_facts()
    gpu, capability = trt_opt.gpu_facts()
    assert timing_cache_path(config.cache_dir, facts.version, gpu, capability).stat().st_size > 0
    assert first.key == engine_cache_key(sidecar["onnx_sha256"], facts.version, gpu, capability, "fp32", first.shapes)
    other = trt_opt.load_or_build(fp32_onnx, {"x": (2, 3, 16, 16)}, _config(tmp_path, "fp32", max_batch=16))
    assert other.cache_hit is False and other.key != first.key


@pytest.mark.trt
@pytest.mark.gpu
def test_corrupt_cached_engine_is_rebuilt(fp32_onnx, tmp_path):
    config = _config(tmp_path, "fp32")
    first = trt_opt.load_or_build(fp32_onnx, {"x": (2, 3, 16, 16)}, config)
    first.path.write_bytes(b"definitely not a TensorRT engine" * 10)
    again = trt_opt.load_or_build(fp32_onnx, {"x": (2, 3, 16, 16)}, config)
    assert again.cache_hit is False and again.path.read_bytes() == again.data
    trt_opt.TrtEngineRunner(again.data)  # deserializes


@pytest.mark.trt
@pytest.mark.gpu
def test_parser_errors_are_listed(tmp_path):
    graph = _tiny_graph(tmp_path / "bad.onnx", op="NoSuchOp", domain="com.example")
    with pytest.raises(RuntimeError, match=r"ONNX parser failed .* with [1-9]\d* errors:\n.*NoSuchOp"):
        trt_opt.build_engine(graph, {"x": (2, 4)}, _config(tmp_path, "fp32"))


@pytest.mark.trt
@pytest.mark.gpu
def test_runner_outside_profile_reuse_and_current_stream(fp32_onnx, tmp_path, no_tf32):
    data = trt_opt.build_engine(fp32_onnx, {"x": (2, 3, 16, 16)}, _config(tmp_path, "fp32"))
    runner = trt_opt.TrtEngineRunner(data)
    assert runner.input_names == ["x"] and len(runner.output_names) == 1
    with pytest.raises(ValueError, match="outside the engine's profile"):
        runner(torch.randn(9, 3, 16, 16, device="cuda"))
    x = torch.randn(3, 3, 16, 16, device="cuda")
    a = runner(x)
    b = runner(x)
    assert a.data_ptr() == b.data_ptr()  # same shape: the output buffer is reused
    c = runner(torch.randn(5, 3, 16, 16, device="cuda"))
    assert c.shape == (5, 10) and c.data_ptr() != a.data_ptr()  # a new shape: a new buffer
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        x_side = torch.randn(6, 3, 16, 16, device="cuda")
        out = runner(x_side).clone()
    side.synchronize()
    check_exact(out, _eager(x_side), torch.float32, label="trt-side-stream")
    torch.cuda.synchronize()
    assert runner.calls == 4 and set(runner.dtypes.values()) == {torch.float32}


@pytest.mark.trt
@pytest.mark.gpu
def test_layer_profile_reports_every_layer_of_each_step(fp32_onnx, tmp_path):
    """TensorRT's IProfiler on the runner's own context (nn_speedups.trace's engine profile for trt-* rows)."""
    from nn_speedups.trace import engine_fields

    x = torch.randn(4, 3, 16, 16, device="cuda")
    runner = trt_opt.apply(small_model().cuda(), (x,), _config(tmp_path, "fp32"), [fp32_onnx])
    inputs = runner.prepare((x,))
    runner(*inputs)
    profile = runner.engine_profile(inputs, 3, tmp_path, "small")
    assert profile["steps"] == 3 and profile["ops"], profile
    per_step = [sum(1 for o in profile["ops"] if o["run"] == step) for step in range(3)]
    assert per_step[0] > 0 and len(set(per_step)) == 1  # every layer reported once per execution
    assert all(o["us"] >= 0 for o in profile["ops"])
    fields = engine_fields(profile, None, cuda=True)
    assert fields["op_ms_per_step_total"] > 0 and fields["breakdown_source"].startswith("tensorrt IProfiler")
    out = runner(*inputs)  # the context still runs after the profiler is detached
    torch.cuda.synchronize()
    assert out.shape == (4, 10)


@pytest.mark.trt
@pytest.mark.gpu
def test_the_module_docstrings_example_runs(tmp_path):
    """The module docstring's recipe (seed 003's example on TensorRT 10), step by step on the small model (resnet18's
    weights would need a download): a half model exported on the GPU with a batch dimension up to 64, an engine for
    TrtConfig(precision="fp16") with its default profile 1/8/64, one call on torch's current stream, and the facts."""
    model = small_model().eval().cuda().half()
    x = torch.randn(8, 3, 16, 16, device="cuda", dtype=torch.half)  # batch >= 2 keeps dim 0 dynamic
    batch = torch.export.Dim("batch", min=1, max=64)
    onnx_path = tmp_path / "small_fp16.onnx"
    torch.onnx.export(model, (x,), str(onnx_path), dynamo=True, dynamic_shapes=({0: batch},))
    config = trt_opt.TrtConfig(precision="fp16", cache_dir=str(tmp_path / "trt"))
    runner = trt_opt.apply(model, (x,), config, onnx_files=[onnx_path])
    with torch.inference_mode():
        logits = runner(*runner.prepare((x,)))
    torch.cuda.synchronize()
    assert logits.shape == (8, 10)
    check_lowp(logits, _eager(x), label="docstring-example")
    runner.verify()
    info = runner.info
    assert info["profile_batches"] == "1/8/64" and info["onnx_variant"] == "fp16" and info["trt_version"]
    assert info["engine_cache_hit"] is False and info["engine_build_s"] > 0

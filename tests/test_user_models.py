"""Your own model in the suite: a factory module, an ONNX file and a Hugging Face folder, each written here by hand
outside the project and run as a new user would (a real pytest session from another folder), plus the suite
installed as a package with its pytest entry point, and the bad input that must stop a run before any timing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from nn_speedups.models.hf_folder import hf_spec
from nn_speedups.models.onnx_file import OnnxFileModule, onnx_spec
from nn_speedups.models.user import UserModel, UserModelError, factory_spec, load_user_specs, spec_from_example
from nn_speedups.optimizations.onnx_export import ExportConfig, ExportError, export
from tests.conftest import ROOT

B = "nn_speedups.benches."  # the installed benches, as --pyargs names them


def run_pytest(args: list[str], cwd: Path, pythonpath: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """A fresh pytest session from `cwd` with only `pythonpath` added to the path (no repository ini, no conftest)."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def rows(path: Path) -> dict[str, dict]:
    return {b["name"]: b["extra_info"] for b in json.loads(path.read_text())["benchmarks"]}


# ------------------------------------------------------------------------------------------ things written by hand


def token_graph(folder: Path, batch: str | int = "batch") -> Path:
    """tokens [batch, seq] int64 -> embedding (50 x 16) -> MatMul -> Relu -> mean over seq -> MatMul -> [batch, 4];
    `seq` is left open, the weights are external data."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((50, 16)).astype(np.float32), "emb"),
        numpy_helper.from_array((rng.standard_normal((16, 32)) / 4).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((32, 4)) / 6).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "tokens"], ["h0"]),
        helper.make_node("MatMul", ["h0", "w1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("ReduceMean", ["h2"], ["h3"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["h3", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "textnet",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, [batch, "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "textnet.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="textnet.onnx.data", size_threshold=0)
    return path


def image_graph(folder: Path) -> Path:
    """A static-batch classifier: [1, 3, 16, 16] -> Conv -> GlobalAveragePool -> Flatten -> Gemm -> [1, 5]."""
    rng = np.random.default_rng(1)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.standard_normal((5, 8)).astype(np.float32), "fc_w"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "imagenet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"  # a generic stem: the spec is named after the folder
    onnx.save_model(model, str(path))
    return path


def tiny_bert_folder(folder: Path) -> tuple[Path, int]:
    """A real Hugging Face folder: a 2-layer BERT with hidden size 32 saved with save_pretrained; its parameters."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = BertModel(config)
    model.save_pretrained(str(folder))
    return folder, sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="session")
def user_project(tmp_path_factory) -> Path:
    """A user's project folder, outside the repository, holding the worked example's model module."""
    project = tmp_path_factory.mktemp("user_project")
    shutil.copy(ROOT / "examples" / "my_model.py", project / "my_model.py")
    return project


# ------------------------------------------------------------------------------------------ end to end


def test_installed_suite_benchmarks_the_example_model_from_its_own_project(installed, user_project):
    """pip-installed suite, no repository on the path, no -p: the entry point loads the plugin for its benches."""
    # one package, and bin/ for the nn-speedups command (pip --target puts console scripts there)
    assert sorted(p.name for p in installed.iterdir() if p.suffix != ".dist-info") == ["bin", "nn_speedups"]
    entry_points = next(installed.glob("nn_speedups-*.dist-info")) / "entry_points.txt"
    assert "nn_speedups = nn_speedups.pytest_plugin" in entry_points.read_text()
    out = user_project / "example.json"
    args = ["--pyargs", B + "test_inference", B + "test_onnxruntime", B + "test_fastswish",
            "--model", "my_model:make_model",
            "--batch-sizes", "1", "--variants", "eager,channels-last,amp-bf16,ort-cpu,ort-int8-minmax",
            f"--benchmark-json={out}", "--report-dir", "reports", "-rs"]  # fmt: skip
    result = run_pytest(args, cwd=user_project, pythonpath=installed)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    found = rows(out)
    assert set(found) == {
        "test_inference[my_model-bs1-eager-fp32]",
        "test_inference[my_model-bs1-channels-last-fp32]",
        "test_inference[my_model-bs1-amp-bf16]",
        "test_onnxruntime[my_model-bs1-eager-fp32]",
        "test_onnxruntime[my_model-bs1-ort-cpu-fp32]",
        "test_onnxruntime[my_model-bs1-ort-int8-minmax-int8]",
    }
    for info in found.values():
        assert info["model"] == "my_model" and info["image_size"] == 32 and info["params"] == 5514
        assert info["speedup_vs_eager"] == pytest.approx(info["eager_median_ms"] / info["median_ms"])
    int8 = found["test_onnxruntime[my_model-bs1-ort-int8-minmax-int8]"]
    assert int8["sqnr_db"] >= 20 and 0 <= int8["top1_agreement"] <= 1  # a 10-class head: agreement is measured
    assert "my_model has no activation slot to swap relu into" in result.stdout  # FastSwish's model level: why not
    assert f"{installed.name}/nn_speedups/benches/test_fastswish.py" in result.stdout  # -rs: the installed benches
    assert (user_project / "reports").is_dir()


def test_onnx_file_is_benchmarked_against_onnx_runtime_fp32(tmp_path):
    """An ONNX file with external data and an open sequence dim, through the plugin loaded with -p."""
    path = token_graph(tmp_path / "user_files")
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    out = elsewhere / "onnx.json"
    args = ["-p", "nn_speedups.plugin", "--pyargs", B + "test_onnxruntime", B + "test_inference",
            B + "test_tensorrt", "--onnx", str(path), "--onnx-dim", "seq=8", "--batch-sizes", "1,2",
            "--variants", "eager,compile,ort-cpu,ort-int8-dynamic,trt-fp32", f"--benchmark-json={out}",
            "--report-dir", "reports", "-rs"]  # fmt: skip
    result = run_pytest(args, cwd=elsewhere, pythonpath=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    found = rows(out)
    assert set(found) == {f"test_onnxruntime[textnet-bs{b}-{v}]" for b in (1, 2) for v in
                          ("eager-fp32", "ort-cpu-fp32", "ort-int8-dynamic-int8")}  # fmt: skip
    data_bytes = (path.parent / "textnet.onnx.data").stat().st_size
    eager = found["test_onnxruntime[textnet-bs2-eager-fp32]"]
    assert eager["info_baseline"].startswith("onnxruntime cpu") and eager["info_provider"] == "CPUExecutionProvider"
    assert eager["model_size_mb"] * 2**20 == pytest.approx(path.stat().st_size + data_bytes)  # graph + its data
    assert eager["params"] == 50 * 16 + 16 * 32 + 32 * 4 and eager["gflops"] is None
    for info in found.values():
        assert (
            info["eager_median_ms"]
            == found[f"test_onnxruntime[textnet-bs{info['batch_size']}-eager-fp32]"]["median_ms"]
        )
    assert found["test_onnxruntime[textnet-bs1-ort-int8-dynamic-int8]"]["sqnr_db"] >= 20
    assert "compile needs a torch model; textnet is an ONNX file (--onnx)" in result.stdout
    assert "trt-fp32 is GPU-only" in result.stdout or "needs tensorrt" in result.stdout


def test_hugging_face_folder_runs_with_token_inputs_from_its_config(tmp_path):
    folder, params = tiny_bert_folder(tmp_path / "tiny-bert")
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    out = elsewhere / "hf.json"
    args = ["-p", "nn_speedups.plugin", "--pyargs", B + "test_inference", B + "test_onnxruntime",
            B + "test_training", "--model", f"hf:{folder}", "--seq-len", "16", "--batch-sizes", "2",
            "--variants", "eager,amp-bf16,ort-cpu,vanilla", f"--benchmark-json={out}", "--report-dir", "reports",
            "-rs"]  # fmt: skip
    env_before = os.environ.get("HF_HUB_OFFLINE")
    result = run_pytest(args, cwd=elsewhere, pythonpath=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    found = rows(out)
    assert set(found) == {
        "test_inference[tiny-bert-bs2-eager-fp32]",
        "test_inference[tiny-bert-bs2-amp-bf16]",
        "test_onnxruntime[tiny-bert-bs2-eager-fp32]",
        "test_onnxruntime[tiny-bert-bs2-ort-cpu-fp32]",
    }
    for info in found.values():
        assert info["image_size"] is None and info["params"] == params and info["gflops"] > 0
    assert found["test_onnxruntime[tiny-bert-bs2-ort-cpu-fp32]"]["check"] == "exact"
    assert "the training benches train image classifiers; tiny-bert is not one" in result.stdout
    assert os.environ.get("HF_HUB_OFFLINE") == env_before  # set in the run's process only


@pytest.mark.parametrize(
    "kind, message",
    [
        ("factory", "ERROR: --model nowhere.models:make: cannot import nowhere.models: ModuleNotFoundError"),
        ("onnx", "the graph leaves these input dims open: seq (input tokens); give their sizes: --onnx-dim seq=SIZE"),
        ("hf", "no such folder (give one written by save_pretrained: config.json + weights)"),
    ],
)
def test_bad_input_stops_the_run_before_any_timing_with_one_line(kind, message, tmp_path):
    option = {
        "factory": ["--model", "nowhere.models:make"],
        "onnx": ["--onnx", str(token_graph(tmp_path / "f"))],
        "hf": ["--model", f"hf:{tmp_path / 'no-such-folder'}"],
    }[kind]
    result = run_pytest(["-p", "nn_speedups.plugin", "--pyargs", B + "test_inference", *option], tmp_path, ROOT)
    assert result.returncode == 4, result.stdout[-3000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "passed" not in result.stdout


@pytest.mark.parametrize("explicit", [False, True], ids=["conftest", "conftest-and-p"])
def test_the_repositorys_own_conftest_runs_beside_the_installed_entry_point(installed, explicit, tmp_path):
    """conftest.py registers nn_speedups.plugin, and so may -p: one registration, no error; the repository's own
    package (pytest.ini's pythonpath, applied before pytest loads entry points and -p plugins) wins over an installed
    copy that is first on PYTHONPATH, even where the working folder is not on the path, as with the `pytest` command."""
    args = [str(ROOT / "tests" / "test_timing.py"), "--rootdir", str(ROOT), "--collect-only", "-q"]
    args += ["-p", "nn_speedups.plugin"] if explicit else []
    code = (
        "import sys, pytest\n"
        "sys.path.remove('') if '' in sys.path else None\n"
        f"code = pytest.main({['-p', 'no:cacheprovider', *args]!r})\n"
        "import nn_speedups.plugin, nn_speedups.pytest_plugin\n"
        "print('PLUGIN', nn_speedups.plugin.__file__)\n"
        "print('STUB', nn_speedups.pytest_plugin.__file__)\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(installed)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "tests collected" in result.stdout
    assert f"PLUGIN {ROOT / 'nn_speedups' / 'plugin' / '__init__.py'}" in result.stdout
    assert f"STUB {ROOT / 'nn_speedups' / 'pytest_plugin.py'}" in result.stdout


# ------------------------------------------------------------------------------------------ specs, in-process


class TextModel(nn.Module):
    """Keyword inputs and a dict output, like a Hugging Face model."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask):
        hidden = self.embed(input_ids) * attention_mask[..., None]
        return {"logits": self.head(hidden.mean(1)), "hidden": hidden}


def test_a_pair_becomes_a_spec_with_inferred_tags_names_and_inputs():
    example = {"input_ids": torch.randint(3, 20, (2, 6)), "attention_mask": torch.tensor([[1] * 6, [1] * 3 + [0] * 3])}
    spec = spec_from_example("text", TextModel, TextModel(), example)
    assert spec.tags == {"nlp", "user"} and spec.input_names == ("input_ids", "attention_mask")
    assert spec.num_classes == 3 and spec.image_size is None
    model = spec.build()
    assert isinstance(model, UserModel)
    ids, mask = spec.example_inputs(5, 0, "cpu", 0)
    assert torch.equal(ids[2], example["input_ids"][0]) and ids.shape == (5, 6)  # the example's rows, repeated
    with torch.inference_mode():
        assert model(ids, mask).shape == (5, 3)  # the first tensor of the dict
    ids1, mask1 = spec.example_inputs(4, 0, "cpu", 7)
    assert 3 <= ids1.min() and ids1.max() < 20 and not torch.equal(ids1, ids[:4])  # new ids in the example's range
    assert set(mask1.unique().tolist()) <= {0, 1}
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7))
    vision = spec_from_example("cnn", lambda: conv, conv, torch.randn(2, 3, 24, 24))
    assert vision.tags == {"vision", "conv", "user"} and vision.num_classes == 7 and vision.image_size == 24
    assert vision.build() is conv and vision.input_names == ("input",)
    floats = vision.example_inputs(3, 0, "cpu", 5)[0]
    assert floats.shape == (3, 3, 24, 24) and floats.dtype == torch.float32


def test_factories_name_and_errors(tmp_path, monkeypatch):
    module = tmp_path / "team_models.py"
    module.write_text(
        "import torch\n"
        "from nn_speedups.models.registry import ModelSpec, image_inputs\n"
        "def make_model():\n    return torch.nn.Linear(4, 2), torch.randn(2, 4)\n"
        "def make_ranker():\n    return torch.nn.Linear(4, 2), (torch.randn(2, 4),)\n"
        "def spec():\n    return ModelSpec('ranker-v2', lambda image_size=None: torch.nn.Identity(), image_inputs)\n"
        "def raises():\n    raise FileNotFoundError('weights.pt')\n"
        "def wrong():\n    return torch.nn.Linear(4, 2)\n"
        "def unbatched():\n    return torch.nn.Linear(4, 2), (torch.randn(2, 4), torch.randn(3))\n"
    )
    monkeypatch.chdir(tmp_path)
    assert factory_spec("team_models:make_model").name == "team_models"  # make_model says nothing: the module does
    assert factory_spec(f"{module}:make_ranker").name == "ranker"
    assert factory_spec("mine=team_models:make_ranker").name == "mine"
    spec = factory_spec("team_models:spec")
    assert spec.name == "ranker-v2" and "user" in spec.tags
    errors = {
        "team_models:raises": "--model team_models:raises: the factory raised FileNotFoundError: weights.pt",
        "team_models:wrong": "the factory returned a Linear; return (model, example_inputs) or a ModelSpec",
        "team_models:unbatched": "example inputs must share a first (batch) dimension: shapes (2, 4), (3,)",
        "team_models:absent": "team_models has no attribute 'absent'",
        "missing_module:make": "cannot import missing_module: ModuleNotFoundError: No module named 'missing_module'",
        "no-colon": "give module.path:factory, path/to/file.py:factory or hf:PATH",
    }
    for entry, message in errors.items():
        with pytest.raises(UserModelError, match="^.*$") as caught:
            factory_spec(entry)
        assert message in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UserModelError, match="both named 'ranker'"):
        load_user_specs(["team_models:make_ranker", "team_models:make_ranker"])


def test_the_worked_examples_spec_has_an_activation_slot():
    spec = factory_spec(f"{ROOT / 'examples' / 'my_model.py'}:make_spec")
    assert spec.name == "smallnet" and spec.tags == {"vision", "conv", "activation-slot", "user"}
    from nn_speedups.models.registry import build_model

    swapped = build_model(spec, 32, activation="hardswish")
    assert any(isinstance(m, nn.Hardswish) for m in swapped.modules())
    (images,) = spec.example_inputs(2, 32, "cpu", 0)
    with torch.inference_mode():
        assert swapped(images).shape == (2, 10)


def test_onnx_files_inputs_from_the_graph_and_their_errors(tmp_path):
    path = token_graph(tmp_path / "text")
    with pytest.raises(UserModelError, match=r"leaves these input dims open: seq \(input tokens\)"):
        onnx_spec(str(path), {})
    spec, open_dims = onnx_spec(str(path), {"seq": 12})
    assert open_dims == {"seq"} and spec.name == "textnet" and spec.tags == {"onnx-file", "user", "nlp"}
    (tokens,) = spec.example_inputs(3, 0, "cpu", 0)
    assert tokens.shape == (3, 12) and tokens.dtype == torch.int64 and 0 <= tokens.min() and tokens.max() < 50
    module = spec.build()
    assert isinstance(module, OnnxFileModule) and module.parameter_count == 50 * 16 + 16 * 32 + 32 * 4
    with torch.inference_mode():
        assert module(tokens).shape == (3, 4)
    artifact = export(module, (tokens,), ExportConfig(name="textnet"))  # the file is its own export
    assert artifact.path == path.resolve() and len(artifact.files) == 2
    with pytest.raises(ExportError, match="benchmarked as given"):
        export(module, (tokens,), ExportConfig(name="textnet", dtype="fp16"))
    with pytest.raises(UserModelError, match="no input of .* has an open dim named 'sequence'"):
        load_user_specs(onnx_files=[str(path)], onnx_dims=["seq=8", "sequence=8"])
    image, _ = onnx_spec(str(image_graph(tmp_path / "classifier")), {})
    assert image.name == "classifier" and image.tags == {"onnx-file", "user", "vision", "conv"}
    assert image.batch_sizes == (1,) and image.num_classes == 5 and image.image_size == 16
    (path.parent / "textnet.onnx.data").unlink()
    with pytest.raises(UserModelError, match="external data .*textnet.onnx.data is missing"):
        onnx_spec(str(path), {"seq": 8})


def test_hugging_face_folder_errors_are_read_from_its_config(tmp_path):
    folder = tmp_path / "clf"
    folder.mkdir()
    with pytest.raises(UserModelError, match="no config.json in it"):
        hf_spec(str(folder))
    config = {"architectures": ["BertForSequenceClassification"], "vocab_size": 99, "max_position_embeddings": 32,
              "id2label": {"0": "no", "1": "yes"}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserModelError, match="no weights in it"):
        hf_spec(str(folder))
    (folder / "model.safetensors").write_bytes(b"")
    spec = hf_spec(str(folder))
    assert spec.name == "clf" and spec.num_classes == 2 and spec.tags == {"nlp", "hf", "user"}
    ids, mask = spec.example_inputs(2, 0, "cpu", 0)
    assert ids.shape == mask.shape == (2, 32) and ids.max() < 99  # 128 capped at the model's 32 positions
    with pytest.raises(UserModelError, match="--seq-len 64 exceeds the model's 32 positions"):
        hf_spec(str(folder), seq_len=64)
    (folder / "config.json").write_text(json.dumps({"image_size": 224}))
    with pytest.raises(UserModelError, match="no vocab_size: hf: takes text models"):
        hf_spec(str(folder))


def test_the_distributed_ranks_load_the_users_model_again(tmp_path):
    """The ranks are fresh processes started from the repository: they import the user's module from the folder the
    run was started in, not from theirs."""
    (tmp_path / "my_model.py").write_text((ROOT / "examples" / "my_model.py").read_text())
    out = tmp_path / "dist.json"
    args = ["-p", "nn_speedups.plugin", "--pyargs", B + "test_distributed", "--model", "my_model:make_model",
            "--world-sizes", "1", "--batch-sizes", "2", "--variants", "ddp", f"--benchmark-json={out}",
            "--report-dir", "reports", "-rs"]  # fmt: skip
    result = run_pytest(args, cwd=tmp_path, pythonpath=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (info,) = rows(out).values()
    assert info["model"] == "my_model" and info["world_size"] == 1 and info["image_size"] == 32  # its own size


# ------------------------------------------------------------------------------------------ --image-size

SIZED_MODELS = '''
import torch
from torch import nn


class Pooled(nn.Module):
    """Takes any image size: adaptive pooling before its head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


def make_pooled():
    return Pooled().eval(), torch.randn(2, 3, 32, 32)


def make_flat():
    """Takes 32x32 only: its head is sized for the flattened 32x32 feature map."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 32 * 32, 10))
    return model.eval(), torch.randn(2, 3, 32, 32)


class Text(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(1))


def make_text():
    return Text().eval(), torch.randint(0, 30, (2, 6))
'''


def test_image_size_resizes_a_users_image_example_and_leaves_other_inputs_their_own(tmp_path, monkeypatch):
    from nn_speedups.models.registry import REGISTRY
    from nn_speedups.models.user import RESIZED, SOURCES, at_image_size, reload, resized_from

    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7))
    example = torch.randn(2, 3, 24, 24)
    spec = spec_from_example("cnn", lambda: conv, conv, example)
    resized, note = at_image_size(spec, 64)
    assert note == "cnn 64x64 (--image-size; its example is 24x24)"
    assert resized.image_size == 64 and resized_from(resized) == (24, 24) and resized_from(spec) is None
    (images,) = resized.example_inputs(3, 64, "cpu", 0)
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.float32
    assert torch.allclose(images[0].mean(), example[0].mean(), atol=0.05)  # the example's own image, resized
    assert resized.example_inputs(8, 64, "cpu", 1001)[0].shape == (8, 3, 64, 64)  # calibration seeds too
    same, note = at_image_size(spec, 24)
    assert same is spec and note == "cnn 24x24"
    text = spec_from_example("text", TextModel, TextModel(), {"input_ids": torch.randint(3, 20, (2, 6)),
                             "attention_mask": torch.ones(2, 6, dtype=torch.long)})  # fmt: skip
    assert at_image_size(text, 64) == (text, "text: its own inputs (--image-size does not apply)")
    onnx_image, _ = onnx_spec(str(image_graph(tmp_path / "classifier")), {})
    assert at_image_size(onnx_image, 64) == (onnx_image, "classifier: its own inputs (--image-size does not apply)")
    # a fresh process (a distributed rank) loads the model again at the size the run resized it to
    (tmp_path / "sized_team.py").write_text(SIZED_MODELS)
    monkeypatch.chdir(tmp_path)
    (pooled,) = load_user_specs(["sized_team:make_pooled"])
    try:
        at_image_size(pooled, 64)
        assert SOURCES["pooled"]["image_size"] == 64
        again = reload(SOURCES["pooled"])
        assert again.image_size == 64 and again.example_inputs(2, 64, "cpu", 0)[0].shape == (2, 3, 64, 64)
    finally:
        for table in (REGISTRY, SOURCES, RESIZED):
            table.pop("pooled", None)
        RESIZED.pop("cnn", None)


def test_image_size_runs_a_users_image_model_at_that_size_or_fails_its_cases_in_one_line(tmp_path):
    (tmp_path / "team.py").write_text(SIZED_MODELS)
    out = tmp_path / "sized.json"
    models = ["--model", "team:make_pooled", "--model", "team:make_flat", "--model", "team:make_text"]
    args = ["-p", "nn_speedups.plugin", "--pyargs", B + "test_inference", *models, "--batch-sizes", "1",
            "--variants", "eager", "--report-dir", "reports", "-rfs"]  # fmt: skip
    result = run_pytest([*args, "--image-size", "64", f"--benchmark-json={out}"], cwd=tmp_path, pythonpath=ROOT)
    assert result.returncode == 1, result.stdout[-4000:] + result.stderr[-4000:]  # flat's case failed
    assert (
        "nn-speedups inputs: pooled 64x64 (--image-size; its example is 32x32); flat 64x64 (--image-size; its "
        "example is 32x32); text: its own inputs (--image-size does not apply)"
    ) in result.stdout
    found = rows(out)
    assert set(found) == {"test_inference[pooled-bs1-eager-fp32]", "test_inference[text-bs1-eager-fp32]"}
    assert found["test_inference[pooled-bs1-eager-fp32]"]["image_size"] == 64
    assert found["test_inference[text-bs1-eager-fp32]"]["image_size"] is None
    refusal = "flat does not take 64 x 64 inputs (its example is 32x32): drop --image-size or make the model take"
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "test_inference[flat-bs1-eager-fp32] - Failed: flat does not take" in failed[0]
    assert refusal in result.stdout  # the failure's one line, in full
    assert json.loads(out.read_text())["nn_speedups"]["failed"]["::test_inference[flat-bs1-eager-fp32]"].startswith(
        f"Failed: {refusal}"
    )
    (md,) = (tmp_path / "reports").glob("*.md")
    assert f"| inference | flat | eager-fp32 | 1 | {refusal}" in md.read_text()  # the report's failed cases
    plain = run_pytest([*args, "--collect-only"], cwd=tmp_path, pythonpath=ROOT)
    assert plain.returncode == 0, plain.stdout[-4000:] + plain.stderr[-4000:]
    assert "nn-speedups inputs: pooled 32x32 (its own size); flat 32x32 (its own size); text: its own inputs" in (
        plain.stdout
    )

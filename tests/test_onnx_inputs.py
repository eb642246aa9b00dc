"""ONNX files as users bring them (issue: real ONNX files): several inputs, an integer scalar, a control-flow `If`,
dynamic spatial dims; what the user gives (--onnx-inputs FILE.npz, --onnx-input NAME=VALUE), what the suite
generates, and an engine's failure ending each case in one line that names the input."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from nn_speedups.models import onnx_file as model_file
from nn_speedups.models.onnx_file import OnnxFileModule, inputs_behind, onnx_spec, parse_inputs
from nn_speedups.models.user import UserModelError, load_user_specs
from nn_speedups.optimizations import onnx_file as engine_file
from nn_speedups.optimizations.base import engine_message
from tests.conftest import ROOT
from tests.test_user_models import rows, run_pytest

SAMPLES = 24


def vad_graph(folder: Path) -> Path:
    """A voice-activity-detector-shaped graph: input [batch, samples] float, state [2, batch, 16] float, sr int64
    scalar. If sr == 16000 the `then` branch scales the input; else the `else` branch reshapes it to [-1, 7] (which
    fails at run time unless batch x samples is a multiple of 7). Outputs: a [batch, 1] score and the new state."""
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    w = numpy_helper.from_array(g.standard_normal((SAMPLES, 16)).astype(np.float32), "w")
    then = helper.make_graph(
        [helper.make_node("Mul", ["input", "half"], ["then_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(0.5, np.float32), "half")],
    )
    other = helper.make_graph(
        [
            helper.make_node("Reshape", ["input", "seven"], ["odd"]),
            helper.make_node("Reshape", ["odd", "back"], ["else_out"]),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.array([-1, 7], np.int64), "seven"),
            numpy_helper.from_array(np.array([-1, SAMPLES], np.int64), "back"),
        ],
    )
    nodes = [
        helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
        helper.make_node("If", ["is16k"], ["picked"], name="If_0", then_branch=then, else_branch=other),
        helper.make_node("MatMul", ["picked", "w"], ["h"]),  # [batch, 16]
        helper.make_node("Unsqueeze", ["h", "zero"], ["h3"]),  # [1, batch, 16]
        helper.make_node("Add", ["state", "h3"], ["sum"]),  # [2, batch, 16]
        helper.make_node("Tanh", ["sum"], ["new_state"]),
        helper.make_node("ReduceMean", ["new_state", "axes"], ["pooled"], keepdims=0),  # [batch]
        helper.make_node("Unsqueeze", ["pooled", "one"], ["score_raw"]),
        helper.make_node("Sigmoid", ["score_raw"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vad",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", SAMPLES]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 16]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [2, "batch", 16]),
        ],
        [
            w,
            numpy_helper.from_array(np.array(16000, np.int64), "rate"),
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([0, 2], np.int64), "axes"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model)
    path = folder / "vad.onnx"
    onnx.save_model(model, str(path))
    return path


def detector_graph(folder: Path) -> Path:
    """image [batch, 3, height, width] (open spatial dims) -> 3x3 conv -> sigmoid(x - 12): a text-detector-shaped
    probability map whose values are all near zero (about 1e-5), the case an output-scaled tolerance got wrong."""
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(1)
    weight = numpy_helper.from_array(0.2 * g.standard_normal((1, 3, 3, 3)).astype(np.float32), "weight")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "weight"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Sub", ["conv", "shift"], ["low"]),
            helper.make_node("Sigmoid", ["low"], ["map"]),
        ],
        "detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("map", TensorProto.FLOAT, ["batch", 1, "height", "width"])],
        [weight, numpy_helper.from_array(np.array(12.0, np.float32), "shift")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model)
    path = folder / "detector.onnx"
    onnx.save_model(model, str(path))
    return path


def _spec(path, dims=None, files=(), values=()):
    given = parse_inputs(list(files), list(values))
    spec, _ = onnx_spec(str(path), dims or {}, given)
    return spec, given


def test_an_integer_scalar_nobody_gave_fails_the_case_in_one_line_naming_it(tmp_path):
    spec, _ = _spec(vad_graph(tmp_path))
    with pytest.raises(UserModelError) as error:
        spec.example_inputs(2)
    message = str(error.value)
    assert "'sr' is an integer scalar" in message and "--onnx-input sr=VALUE" in message
    assert "\n" not in message


def test_given_values_and_arrays_feed_the_graph_tiled_along_its_batch_dims(tmp_path):
    path = vad_graph(tmp_path)
    state = np.random.default_rng(2).standard_normal((2, 1, 16)).astype(np.float64)  # batch 1, float64 on disk
    np.savez(tmp_path / "inputs.npz", state=state)
    spec, given = _spec(path, files=[tmp_path / "inputs.npz"], values=["sr=16000"])
    assert given.used == {"state", "sr"}
    audio, fed_state, sr = spec.example_inputs(3)
    assert audio.shape == (3, SAMPLES) and audio.dtype == torch.float32
    assert fed_state.shape == (2, 3, 16) and fed_state.dtype == torch.float32  # the declared type, tiled to batch 3
    for b in range(3):
        torch.testing.assert_close(fed_state[:, b], torch.from_numpy(state[:, 0]).float())
    assert sr.shape == () and sr.dtype == torch.int64 and int(sr) == 16000
    assert spec.example_inputs(1)[1].shape == (2, 1, 16)  # as saved where the batch matches
    score, new_state = OnnxFileModule(path, spec.input_names, 0)(audio, fed_state, sr)
    w = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0]).astype(np.float64)
    h = (0.5 * audio.double()) @ torch.from_numpy(w)
    expected = torch.sigmoid(
        torch.tanh(torch.from_numpy(state).float().double().expand(2, 3, 16) + h[None]).mean((0, 2))
    )
    torch.testing.assert_close(score[:, 0].double(), expected, rtol=1e-5, atol=1e-6)
    assert new_state.shape == (2, 3, 16)


@pytest.mark.parametrize(
    "files, values, message",
    [
        ({"nothing": np.zeros(3)}, [], "no input of .* is named 'nothing' \\(inputs: input, sr, state\\)"),
        (
            {"state": np.zeros((2, 1))},
            ["sr=1"],
            "input 'state' has 2 dims, the graph declares 3 \\(\\[2, batch, 16\\]\\)",
        ),
        ({"state": np.zeros((3, 1, 16))}, ["sr=1"], "input 'state' is \\(3, 1, 16\\).*dim 0 must be 2"),
        ({}, ["sr=16000.5"], "takes int64, the values given are not whole numbers"),
        ({}, ["sr=sixteen"], "give NAME=VALUE with a number"),
        ({}, ["sr=1,2,3"], "3 values for input 'sr' of shape \\[\\]"),
    ],
)
def test_what_the_user_gives_is_checked_against_the_graph_in_one_line(tmp_path, files, values, message):
    path = vad_graph(tmp_path)
    npz = []
    if files:
        np.savez(tmp_path / "given.npz", **files)
        npz = [str(tmp_path / "given.npz")]
    with pytest.raises(UserModelError, match=message) as error:
        load_user_specs(onnx_files=[str(path)], onnx_input_files=npz, onnx_input_values=values)
    assert "\n" not in str(error.value)


def test_an_array_sizes_the_open_spatial_dims_no_onnx_dim_needed(tmp_path):
    path = detector_graph(tmp_path)
    with pytest.raises(UserModelError, match="--onnx-dim height=SIZE --onnx-dim width=SIZE .*--onnx-inputs"):
        _spec(path)
    np.savez(tmp_path / "page.npz", image=np.random.default_rng(3).random((1, 3, 40, 56), np.float32))
    spec, _ = _spec(path, files=[tmp_path / "page.npz"])
    (image,) = spec.example_inputs(2)
    assert image.shape == (2, 3, 40, 56)
    assert "vision" not in spec.tags  # not a square classifier image: no --data images replace it


def test_the_failing_node_is_traced_back_to_the_inputs_it_reads(tmp_path):
    path = vad_graph(tmp_path)
    assert inputs_behind(path, "If_0") == ["input", "sr"]  # the condition's sr and what the branches read
    assert inputs_behind(path, "nowhere") is None
    spec, _ = _spec(path, values=["sr=8000"])
    hint = spec.explain_failure("FAIL: Non-zero status code returned while running If node. Name:'If_0' ...")
    assert "node 'If_0' reads sr (from --onnx-input sr=8000)" in hint
    assert "input (generated: float32 [batch, 24] of standard normal values)" in hint
    assert "--onnx-input input=VALUE or --onnx-inputs FILE.npz" in hint


def test_engine_messages_lose_their_source_locations():
    class Fail(Exception):
        pass

    text = (
        "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running If node. Name:'If_0' "
        "Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/reshape_helper.h:45 "
        "onnxruntime::common::Status "
        "onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, onnxruntime::TensorShapeVector&, "
        "bool) input_shape_size == size was false. The input tensor cannot be reshaped to the requested shape.\n"
    )
    message = engine_message(Fail(text))
    assert message == (
        "FAIL: Non-zero status code returned while running If node. Name:'If_0' Status Message: input_shape_size == "
        "size was false. The input tensor cannot be reshaped to the requested shape."
    )


def test_onnx_files_through_the_benches_run_with_given_inputs_or_fail_each_case_in_one_line(tmp_path):
    """Through --onnx as a user runs it: the VAD graph with its sample rate and state given runs every CPU fp32 row
    and passes `exact`; the near-zero detector's fp32 rows pass `exact`; with a sample rate the graph rejects, each
    case ends in one line naming the If node and the input, with no traceback through the suite."""
    files = tmp_path / "files"
    vad, detector = vad_graph(files), detector_graph(files)
    np.savez(files / "state.npz", state=np.zeros((2, 1, 16), np.float32))
    np.savez(files / "page.npz", image=np.random.default_rng(4).random((1, 3, 32, 48), np.float32))
    out = tmp_path / "run.json"
    common = ["-p", "nn_speedups.plugin", "--pyargs", "nn_speedups.benches.test_onnxruntime", "--batch-sizes", "1,2",
              "--variants", "eager,ort-cpu,ort-cpu-opt-disabled", "--report-dir", "reports", "-q"]  # fmt: skip
    result = run_pytest(
        [*common, "--onnx", str(vad), "--onnx", str(detector), "--onnx-inputs", str(files / "state.npz"),
         "--onnx-inputs", str(files / "page.npz"), "--onnx-input", "sr=16000", f"--benchmark-json={out}"],
        cwd=tmp_path, pythonpath=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    found = rows(out)
    assert {f"test_onnxruntime[{m}-bs{b}-{v}]" for m in ("vad", "detector") for b in (1, 2)
            for v in ("eager-fp32", "ort-cpu-fp32", "ort-cpu-opt-disabled-fp32")} == set(found)  # fmt: skip
    near_zero = found["test_onnxruntime[detector-bs2-ort-cpu-opt-disabled-fp32]"]
    assert near_zero["check"] == "exact" and near_zero["max_abs_err"] < 1e-6

    bad = run_pytest([*common, "--onnx", str(vad), "--onnx-inputs", str(files / "state.npz"), "--onnx-input",
                      "sr=8000", "--benchmark-disable"], cwd=tmp_path, pythonpath=ROOT)  # fmt: skip
    assert bad.returncode == 1
    failures = [line for line in bad.stdout.splitlines() if line.startswith("vad-bs")]  # the FAILURES section
    assert len(failures) == 6 and "6 failed" in bad.stdout, bad.stdout[-4000:]
    for line in failures:
        assert "onnxruntime failed: FAIL: Non-zero status code returned while running If node. Name:'If_0'" in line
        assert "node 'If_0' reads sr (from --onnx-input sr=8000)" in line
    assert "Traceback" not in bad.stdout and "nn_speedups/measure/protocol.py" not in bad.stdout
    assert "another exception occurred" not in bad.stdout


# models/ describes what runs; optimizations change how it runs (CONTRIBUTING): no models/ file imports one, nor the
# measuring side or the pytest plugin. What runs an ONNX file is supplied to models/onnx_file.py from outside.
LAYERED = ("nn_speedups.optimizations", "nn_speedups.measure", "nn_speedups.plugin")


def imported_modules(source: str, package: str = "nn_speedups.models") -> set[str]:
    """Every module a file's code imports, anywhere in it (functions included): `import X`, `from X import Y` (as X
    and X.Y), relative imports resolved against `package`, and importlib.import_module / __import__ of a literal."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def layering_breaks(source: str) -> list[str]:
    return sorted(m for m in imported_modules(source) if any(m == f or m.startswith(f + ".") for f in LAYERED))


def test_the_layering_check_sees_every_form_of_import():
    for line in [
        "from nn_speedups.optimizations.tensorrt import onnx_external_files",
        "def f():\n    from nn_speedups.optimizations import onnxruntime as ort_",
        "import nn_speedups.measure.protocol",
        "from nn_speedups import plugin",
        "from ..optimizations.onnx_export import ExportError",
        "importlib.import_module('nn_speedups.optimizations.onnx_file')",
    ]:
        assert layering_breaks(line), line
    assert not layering_breaks("from nn_speedups.models.registry import ModelSpec\nimport onnx  # optimizations")


def test_models_import_no_optimization_nor_the_measuring_side():
    files = sorted((ROOT / "models").glob("*.py"))
    assert {"onnx_file.py", "onnx_inputs.py", "user.py", "registry.py"} <= {f.name for f in files}
    breaks = {f.name: layering_breaks(f.read_text()) for f in files}
    assert not {name: found for name, found in breaks.items() if found}


def test_the_models_load_without_the_optimizations_and_an_onnx_file_runs_through_the_engine_supplied():
    """In a fresh interpreter the models (every file, ONNX and user models included) load none of the optimizations
    or the measuring side; the engine of ONNX files is supplied by importing nn_speedups.optimizations.onnx_file,
    which nn_speedups.measure.protocol does."""
    code = (
        "import sys\n"
        "import nn_speedups.models, nn_speedups.models.onnx_file as m, nn_speedups.models.user\n"
        f"print(sorted(n for n in sys.modules if n.startswith({LAYERED!r})))\n"
        "try:\n    m.engine()\nexcept RuntimeError as e:\n    print(e)\n"
        "import nn_speedups.measure.protocol\n"
        "print(m.engine().__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    loaded, missing, supplied = result.stdout.splitlines()[-3:]
    assert loaded == "[]"
    assert missing.startswith("nothing runs ONNX files in this process")
    assert supplied == "nn_speedups.optimizations.onnx_file"
    assert model_file.engine() is engine_file  # and so in this session (the plugin imports the protocol)

"""The compression family on tiny models: INT8 graphs really hold quantized ops, pruned models really have smaller
shapes and files, unstructured sparsity is really reached, weight coding round-trips exactly, bad input fails in one
line; and one small real bench run through pytest."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from nn_speedups.measure import weight_coding as wc
from nn_speedups.measure.correctness import CorrectnessError, check_accuracy
from nn_speedups.optimizations import prune
from nn_speedups.optimizations import quantize_torch as qt
from nn_speedups.optimizations.base import NotEngagedError
from tests.conftest import ROOT, run_suite


def tiny_convnet(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes),
    ).eval()  # fmt: skip


def images(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    return 20 * math.log10(ref.norm().item() / (out - ref).norm().item())


# ------------------------------------------------------------------------------------------- INT8


def test_static_int8_graph_holds_quantized_ops_and_matches_float():
    model = tiny_convnet()
    calibration = [(images(8, seed=s),) for s in range(4)]
    graph = qt.quantize_static(model, (images(1),), calibration)  # exported at batch 1: the batch stays dynamic
    ops = qt.quantized_ops(graph)
    assert ops.get("quantized_decomposed.quantize_per_tensor.default", 0) >= 3, ops
    assert any("dequantize_per_channel" in op for op in ops), ops  # per-channel int8 weights
    state = qt.deployable_state(graph)
    int8 = {k: v for k, v in state.items() if v.dtype == torch.int8}
    assert len(int8) == 4 and not any(v.dtype == torch.float32 and v.dim() == 4 for v in state.values())
    x = images(8, seed=9)
    with torch.inference_mode():
        runner = qt.runner_for_graph(graph, (x,), qt.StaticInt8Config(), {})
        out = runner(x)
        runner.verify()
        assert sqnr_db(out, model(x)) > 20
        assert runner.info["quantized_ops"] == sum(ops.values()) and runner.info["int8_tensors"] == 4
        assert "torchao_extensions" in runner.info and runner.info["freezing"] is True
        runner(images(3))  # another batch size: a recompile, which verify() must catch (it would run unfrozen)
    with pytest.raises(NotEngagedError, match="compiled again"):
        runner.verify()


def test_dynamic_int8_makes_linear_weights_int8():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)).eval()
    quantized = qt.quantize_dynamic(model)
    assert qt.int8_linear_count(quantized) == (2, 2) and qt.int8_linear_count(model) == (0, 2)
    with torch.inference_mode():  # as a bench's apply calls it
        state = qt.deployable_state(quantized)
    assert any(v.dtype == torch.int8 and v.numel() == 64 * 128 for v in state.values()), list(state)
    x = torch.randn(16, 64)
    with torch.inference_mode():
        assert sqnr_db(quantized(x), model(x)) > 20


def test_2to4_mask_keeps_two_of_every_four():
    weight = torch.randn(8, 64)
    mask = qt.mask_2to4(weight)
    assert (mask.reshape(-1, 4).sum(dim=1) == 2).all()
    kept = (weight.abs() * mask).reshape(-1, 4)
    dropped = (weight.abs() * ~mask).reshape(-1, 4)
    assert (kept.max(dim=1).values >= dropped.max(dim=1).values).all()


def test_torchao_status_names_its_extensions():
    status = qt.torchao_status()
    assert status["torchao"].startswith("0.") and status["torchao_extensions"]


# ------------------------------------------------------------------------------------------- pruning


def test_unstructured_pruning_reaches_the_sparsity_and_leaves_the_dense_file_as_big(tmp_path):
    model = tiny_convnet()
    pruned = prune.prune_unstructured(model, prune.UnstructuredConfig(0.5))
    assert prune.weight_sparsity(pruned) == pytest.approx(0.5, abs=0.01)
    assert prune.weight_sparsity(model) == 0.0  # the original is untouched
    assert not any("weight_orig" in k or "mask" in k for k in pruned.state_dict())  # made permanent
    from nn_speedups.optimizations.finetune import FineTuneConfig, fine_tune

    batches = [(images(8, seed=s), torch.arange(8) % 10) for s in range(2)]
    tuned = prune.prune_unstructured(
        model, prune.UnstructuredConfig(0.5), finetune=lambda m: fine_tune(m, batches, FineTuneConfig(steps=3))
    )
    assert prune.weight_sparsity(tuned) == pytest.approx(0.5, abs=0.01)  # trained with the masks: zeros stay
    assert not torch.equal(tuned[0].weight, pruned[0].weight)  # and the kept weights did train
    dense = wc.save_state(model.state_dict(), tmp_path / "dense.pt").stat().st_size
    sparse = wc.save_state(pruned.state_dict(), tmp_path / "sparse.pt").stat().st_size
    assert sparse == pytest.approx(dense, rel=0.01)  # a pruned-but-dense model is not smaller on disk


def test_channel_pruning_removes_channels_shapes_flops_and_bytes(tmp_path):
    model = tiny_convnet()
    x = images(2)
    pruned = prune.prune_channels(model, (x,), prune.ChannelConfig(ratio=0.5, round_to=8))
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 16]  # 16, 32, 32 halved, multiples of 8
    assert pruned[-1].out_features == 10 and pruned[-1].in_features == 16  # the head keeps its classes
    assert pruned(x).shape == (2, 10)
    from nn_speedups.measure.metrics import count_flops

    assert count_flops(pruned, (x,)) < 0.5 * count_flops(model, (x,))
    small = wc.save_state(pruned.state_dict(), tmp_path / "p.pt").stat().st_size
    big = wc.save_state(model.state_dict(), tmp_path / "m.pt").stat().st_size
    assert small < 0.5 * big
    verify, facts = prune.channels_verify(model, pruned, prune.ChannelConfig(0.5))
    verify()
    assert facts["layers_narrower"] == 3 and facts["params_after"] < facts["params_before"]
    with pytest.raises(NotEngagedError, match="removed nothing"):
        prune.channels_verify(model, model, prune.ChannelConfig(0.5))[0]()


def test_fine_tune_lowers_the_loss_and_runs_under_inference_mode():
    from nn_speedups.optimizations.finetune import FineTuneConfig, fine_tune

    model = tiny_convnet()
    with torch.inference_mode():  # as a bench's apply runs; the batches are inference tensors
        batches = [(images(16, seed=s), torch.arange(16) % 10) for s in range(2)]
        stats = fine_tune(model, batches, FineTuneConfig(steps=12, lr=3e-3))
    assert stats["finetune_steps"] == 12 and stats["finetune_loss_last"] < stats["finetune_loss_first"]


# ------------------------------------------------------------------------------------------- bad input


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:  # control flow on a value: torch.export cannot capture it
            return y.relu()
        return y


class HardCodedWidth(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        y = self.conv(x).mean(dim=(2, 3))
        return self.fc(y.reshape(-1, 32))  # a width written into the code: pruning the conv breaks it


def test_a_model_the_quantizer_cannot_capture_fails_in_one_line():
    with pytest.raises(qt.QuantizationError) as error:
        qt.quantize_static(DataDependent().eval(), (images(2),), [(images(2),)])
    message = str(error.value)
    assert "\n" not in message and message.startswith("torch.export cannot capture DataDependent:"), message


def test_a_model_the_pruner_breaks_fails_in_one_line():
    with pytest.raises(prune.PruningError) as error:
        prune.prune_channels(HardCodedWidth().eval(), (images(2),), prune.ChannelConfig(0.5))
    message = str(error.value)
    assert "\n" not in message and message.startswith("torch-pruning cannot prune HardCodedWidth:"), message


def test_the_accuracy_criterion_gates_the_top1_drop():
    out, ref = torch.randn(4, 10), torch.randn(4, 10)
    fine = check_accuracy(out, ref, {"top1": 0.80, "eager_top1": 0.85, "eval_images": 64}, {})
    assert fine.details["top1_drop"] == pytest.approx(0.05) and fine.criterion == "accuracy"
    with pytest.raises(CorrectnessError, match="15.0 points below"):
        check_accuracy(out, ref, {"top1": 0.70, "eager_top1": 0.85, "eval_images": 64}, {})
    ok = check_accuracy(out, ref, {"top1": 0.70, "eager_top1": 0.95}, {"reference_top1": 0.72})  # own reference
    assert ok.details["reference_top1"] == 0.72
    # a matched control above the untouched model: the drop is reported against the control, and only a model more
    # than 10 points below both (broken, not a trade-off) fails
    traded = check_accuracy(out, ref, {"top1": 0.68, "eager_top1": 0.77}, {"reference_top1": 0.867})
    assert traded.details["top1_drop"] == pytest.approx(0.187) and traded.details["reference_top1"] == 0.867
    with pytest.raises(CorrectnessError, match=r"11.0 points below 77.0%, the lower of its reference"):
        check_accuracy(out, ref, {"top1": 0.66, "eager_top1": 0.77}, {"reference_top1": 0.867})
    with pytest.raises(CorrectnessError, match="nothing to judge it by"):
        check_accuracy(out, ref, {}, {})
    with pytest.raises(CorrectnessError, match="cosine"):
        check_accuracy(out, ref, {}, {"kernel_cosine": 0.5})


def test_pruning_variants_skip_without_trained_weights():
    from nn_speedups.benches.test_compression import VARIANTS
    from nn_speedups.matrix.axes import PROFILES
    from nn_speedups.measure.protocol import Case, Settings
    from nn_speedups.models import get_spec
    from nn_speedups.plugin import _skip_reason

    variant = next(v for v in VARIANTS if v.name == "prune-channels-30")
    settings = Settings(device="cpu", profile=PROFILES["quick"], image_size=32)
    trained = Case(get_spec("resnet18"), 2, variant, "cpu", family="compression")
    untrained = Case(get_spec("densenet121"), 2, variant, "cpu", family="compression")
    assert _skip_reason(trained, settings) is None
    assert "needs trained weights" in _skip_reason(untrained, settings)
    settings.weights = "random"
    assert "needs trained weights" in _skip_reason(trained, settings)


# ------------------------------------------------------------------------------------------- weight coding


def test_huffman_round_trip_is_exact_and_sizes_are_consistent(tmp_path):
    gen = torch.Generator().manual_seed(0)
    codes = torch.clamp(torch.randn(64, 256, generator=gen) * 12, -127, 127).round().to(torch.int8)
    sparse = codes.clone()
    sparse[torch.rand(codes.shape, generator=gen) < 0.7] = 0  # mostly zeros: short codes
    state = {"a": codes, "b": sparse, "bias": torch.randn(64), "tiny": torch.zeros(8, dtype=torch.int8)}
    info = wc.write_coded(state, tmp_path / "w.huff")
    wc.check_roundtrip(state, tmp_path / "w.huff")  # raises on any difference
    back = wc.read_coded(tmp_path / "w.huff")
    assert all(torch.equal(back[k], v) for k, v in state.items()) and back["a"].dtype == torch.int8
    assert info["symbols"] == 2 * codes.numel()  # the small one stays raw
    entropy = sum(wc.entropy_bits(np.bincount(wc.symbols(t), minlength=256)) for t in (codes, sparse))
    assert entropy * codes.numel() <= info["bits"] <= (entropy + 2) * codes.numel() + 64  # Huffman: H <= L < H+1
    raw_bytes = 2 * codes.numel() + 64 * 4
    assert info["bytes"] < raw_bytes  # the coded file is smaller than the raw codes
    assert info["bytes"] >= info["bits"] / 8  # and holds all the bits
    tampered = torch.load(tmp_path / "w.huff", weights_only=True)
    tampered["coded"]["a"]["words"][0] ^= 1
    torch.save(tampered, tmp_path / "bad.huff")
    with pytest.raises(AssertionError, match="round trip changed"):
        wc.check_roundtrip(state, tmp_path / "bad.huff")


def test_stage_sizes_of_a_pruned_float_model(tmp_path):
    torch.manual_seed(0)
    weight = torch.randn(128, 512)
    weight[weight.abs() < 0.7] = 0  # about half zeros, as unstructured pruning leaves them
    state = {"fc.weight": weight, "fc.bias": torch.randn(128)}
    model_file = wc.save_state(state, tmp_path / "model.pt")
    sizes = wc.stage_sizes(state, model_file, tmp_path, model_file.stat().st_size, kmeans=(16,))
    assert sizes["quantized_ratio"] == pytest.approx(4, rel=0.1)  # int8 codes: a quarter of fp32
    assert sizes["compressed_ratio"] > sizes["quantized_ratio"]  # Huffman shortens the many zeros
    assert sizes["kmeans16_ratio"] > sizes["compressed_ratio"]  # 16 shared values: fewer bits still
    assert sizes["huffman_roundtrip"] == "exact" and sizes["zstd_ratio"] > 1
    kmeans = wc.kmeans_codes(state, 16)
    assert kmeans["fc.weight"].dtype == torch.uint8 and int(kmeans["fc.weight"].max()) < 16
    shared = wc.dequantize_kmeans(kmeans)["fc.weight"]
    assert (shared[weight == 0] == 0).all()  # pruned zeros stay exact zeros
    assert sqnr_db(shared, weight) > 15


# ------------------------------------------------------------------------------------------- a real bench run


def test_compression_bench_runs_and_records_what_it_saved(tmp_path):
    """resnet18 at 32x32 (the quick profile trains it once here, a few seconds), batch 2: static INT8 and 30%
    channel pruning with its fine-tune, against eager and the compiled reference."""
    out = tmp_path / "run.json"
    result = run_suite(
        [str(ROOT / "benches" / "test_compression.py"), "--rootdir", str(ROOT), "-k", "test_compression",
         "--models", "resnet18", "--image-size", "32", "--batch-sizes", "2", "--eval-samples", "64",
         "--variants", "eager,pt-int8-static,prune-channels-30", "--finetune-steps", "20", f"--benchmark-json={out}",
         "--report-dir", str(tmp_path / "reports")],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = {b["extra_info"]["variant"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    eager, int8, pruned = rows["eager"], rows["pt-int8-static"], rows["prune-channels-30"]
    assert int8["info_quantized_ops"] > 0 and int8["info_int8_tensors"] > 0 and int8["sqnr_db"] >= 20
    assert int8["speedup_vs_compiled"] > 0 and int8["compiled_median_ms"] > 0
    assert int8["model_size_mb"] < 0.3 * eager["model_size_mb"]  # the saved int8 file
    assert int8["compressed_size_mb"] <= int8["model_size_mb"] and int8["huffman_roundtrip"] == "exact"
    assert pruned["params"] < 0.7 * eager["params"] and pruned["gflops"] < 0.7 * eager["gflops"]
    assert pruned["model_size_mb"] < 0.7 * eager["model_size_mb"] and pruned["check"] == "accuracy"
    assert pruned["top1_after_finetune"] == pytest.approx(pruned["top1"], abs=0.02)  # same images, eager
    assert pruned["finetune_steps"] == 20 and pruned["build_s"] > 0 and pruned["kmeans16_size_mb"] > 0
    # judged against the matched control, the uncompressed model fine-tuned the same 20 steps, not the untouched one
    assert pruned["control_steps"] == 20 and pruned["reference_top1"] == pruned["control_top1"]
    assert pruned["top1_drop"] == pytest.approx(pruned["control_top1"] - pruned["top1"])
    assert "control_top1" not in int8 and "control_top1" not in eager  # no training, no control
    saved = torch.load(pruned["model_file"], weights_only=True)
    assert saved["conv1.weight"].shape[0] < 64  # the real, narrower shapes on disk
    md = next((tmp_path / "reports").glob("*.md")).read_text()
    assert "compression: resnet18, sizes, accuracy and speed-ups" in md and "per technique and batch" in md
    assert f"| control: eager + 20 fine-tune steps, lr 0.0003 {'| - ' * 9}| {pruned['control_top1']:.1%} |" in md
    assert next((tmp_path / "reports").glob("*-accuracy-latency.png")).stat().st_size > 1000


def test_report_tables_and_accuracy_latency_plot(tmp_path):
    from nn_speedups import report

    def row(variant, batch, ms, top1, **extra):
        return {"family": "compression", "model": "resnet18", "variant": variant, "dtype": "fp32", "batch_size": batch,
                "median_ms": ms, "samples_per_s": batch / ms * 1e3, "speedup_vs_eager": 10.0 / ms, "top1": top1,
                "params": 1e6, "gflops": 0.5 * batch, **extra}  # fmt: skip

    rows = [
        row("eager", 8, 10.0, 0.80),
        row("prune-channels-50", 8, 5.0, 0.78, model_size_mb=10.0, size_ratio=4.0, compressed_size_mb=2.0,
            compressed_ratio=20.0, top1_before_finetune=0.1, top1_after_finetune=0.78, speedup_vs_compiled=1.5,
            check="accuracy", top1_drop=0.04, reference_top1=0.82, sqnr_db=6.0, size_fp32_mb=40.0, control_top1=0.82,
            control_steps=30, control_lr=3e-4, reference_kind="control: uncompressed, fine-tuned the same 30 steps"),
        row("distilled-from-resnet50", 8, 10.0, 0.82, student_alone_top1=0.79, teacher_top1=0.85,
            teacher_median_ms=25.0, student_median_ms=10.0, student_speedup_vs_teacher=2.5),
        {**row("ort-int8-minmax", 8, 3.0, 0.79), "family": "onnxruntime"},
    ]  # fmt: skip
    text = report.render_tables({"machine_info": {}, "benchmarks": [{"extra_info": r} for r in rows]})
    assert "compression: resnet18, sizes, accuracy and speed-ups" in text
    assert "| prune-channels-50-fp32 | 1.00 | 0.500 | 10.00 (4.0x) |" in text
    assert "10.0% / 78.0%" in text and "20.0x" in text
    assert "accuracy (top-1 -4.0 pts vs 82.0%, control: uncompressed, fine-tuned the same 30 steps" in text
    assert "| 78.0% | -4.0 (control) |" in text  # against the control's 82%, not eager's 80%
    assert f"| control: eager + 30 fine-tune steps, lr 0.0003 {'| - ' * 9}| 82.0% | - |" in text
    assert "distillation: students against the teacher" in text and "| 82.0% | 79.0% | 85.0% |" in text
    assert "compression: resnet18, per technique and batch" in text
    png = report.plot_accuracy_latency(rows, tmp_path / "acc.png")
    assert png.stat().st_size > 1000
    assert report.plot_accuracy_latency([{**r, "top1": None} for r in rows], tmp_path / "none.png") is None


def test_the_pareto_front_keeps_the_variants_no_other_beats_on_both():
    from nn_speedups.report.plots import pareto_front

    points = [(10.0, 80.0), (5.0, 78.0), (3.0, 79.0), (12.0, 82.0), (3.0, 70.0), (11.0, 81.0)]
    assert pareto_front(points) == [2, 0, 5, 3]  # 3 ms 79%, 10 ms 80%, 11 ms 81%, 12 ms 82%; (5, 78) and (3, 70) lose
    assert pareto_front([(1.0, 50.0)]) == [0] and pareto_front([]) == []


def test_weight_coding_cli_recomputes_sizes_from_a_saved_file(tmp_path, capsys):
    state = tiny_convnet().state_dict()
    model = wc.save_state(state, tmp_path / "model.pt")
    assert wc.main([str(model), "--kmeans", "16", "--out-dir", str(tmp_path / "coding")]) == 0
    printed = capsys.readouterr().out
    assert "int8 + Huffman" in printed and "k-means 16 + Huffman" in printed and "round trip exact" in printed
    assert (tmp_path / "coding" / "int8.huff").is_file() and (tmp_path / "model.pt.zst").is_file()
    assert wc.main([str(tmp_path / "missing.pt")]) == 2

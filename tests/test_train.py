"""nn_speedups.train and nn_speedups.models.ghost_bn: Ghost BatchNorm against per-chunk BatchNorm, the LR schedule, head
resizing,
and real short CLI runs (metrics.json, learning, resume, bad input -> exit code 2)."""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from nn_speedups.core.capabilities import has_cuda
from nn_speedups.models import build_model, get_spec
from nn_speedups.models.ghost_bn import GhostBatchNorm2d, use_ghost_batchnorm
from nn_speedups.train import (
    TrainConfig,
    effective_lr,
    lr_at_step,
    main,
    set_num_classes,
    split_compile_time,
    train,
    warmup_steps,
)

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--model", "resnet18", "--data", "synthetic", "--image-size", "32", "--batch-size", "32"]
QUICK += ["--train-samples", "256", "--eval-samples", "128"]
EPOCH_FIELDS = {
    "epoch",
    "train_loss",
    "val_loss",
    "top1",
    "top5",
    "lr",
    "data_s",
    "compute_s",
    "compile_s",
    "eval_s",
    "epoch_s",
    "images_per_s",
}


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "nn_speedups.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ------------------------------------------------------------------------------------------ Ghost BN


def _random_bn(channels: int = 4) -> nn.BatchNorm2d:
    generator = torch.Generator().manual_seed(1)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=generator))
        bn.running_mean.copy_(torch.randn(channels, generator=generator))
        bn.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
    return bn


def _batch(n: int, channels: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    shifts = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)  # chunks have visibly different means
    return torch.randn(n, channels, 5, 5, generator=generator) * 2 + shifts


@pytest.mark.parametrize("n", [16, 18])  # 18: a last chunk of 2
def test_ghost_bn_train_normalizes_each_chunk_like_batchnorm(n):
    bn = _random_bn().train()
    ghost = GhostBatchNorm2d.from_batchnorm(copy.deepcopy(bn), ghost_batch_size=4)
    x = _batch(n)
    out = ghost(x)
    reference = copy.deepcopy(bn)
    expected = torch.cat([reference(chunk) for chunk in x.split(4)])
    torch.testing.assert_close(out, expected)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ghost, name), getattr(reference, name))
    full = copy.deepcopy(bn)(x)
    assert (out - full).abs().max() > 0.1, "ghost output equals full-batch BN: chunks were not normalized apart"
    for chunk in out.split(4):  # each ghost batch is normalized by its own statistics
        normalized = (chunk - ghost.bias.view(1, -1, 1, 1)) / ghost.weight.view(1, -1, 1, 1)
        torch.testing.assert_close(normalized.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)


def test_ghost_bn_eval_uses_running_stats():
    bn = _random_bn().eval()
    ghost = GhostBatchNorm2d.from_batchnorm(bn, ghost_batch_size=4).eval()
    x = _batch(16)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    expected = (x - bn.running_mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(ghost(x), expected)
        torch.testing.assert_close(ghost(x)[:3], ghost(x[:3]))  # per sample, no batch statistics
    assert ghost.num_batches_tracked.item() == 0


def test_ghost_bn_gradients_match_per_chunk_batchnorm():
    bn = _random_bn().train()
    ghost = GhostBatchNorm2d.from_batchnorm(copy.deepcopy(bn), ghost_batch_size=4)
    reference = copy.deepcopy(bn)
    x = _batch(12).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    weights = torch.randn(12, 4, 5, 5, generator=torch.Generator().manual_seed(3))
    (ghost(x) * weights).sum().backward()
    (torch.cat([reference(chunk) for chunk in x_ref.split(4)]) * weights).sum().backward()
    assert ghost.weight.grad.abs().sum() > 0 and ghost.bias.grad.abs().sum() > 0
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(ghost.weight.grad, reference.weight.grad)
    torch.testing.assert_close(ghost.bias.grad, reference.bias.grad)


def test_ghost_bn_state_dict_is_batchnorm_compatible():
    assert GhostBatchNorm2d(8, 4).state_dict().keys() == nn.BatchNorm2d(8).state_dict().keys()
    spec = get_spec("resnet18")
    plain, ghosted = build_model(spec, 32), build_model(spec, 32)
    assert use_ghost_batchnorm(ghosted, 16) == 20
    assert sum(isinstance(m, GhostBatchNorm2d) for m in ghosted.modules()) == 20
    assert not any(type(m) is nn.BatchNorm2d for m in ghosted.modules())
    assert ghosted.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(ghosted.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ghosted.eval()(x), plain.eval()(x))
    assert use_ghost_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm(4)), 16) == 0


# ------------------------------------------------------------------------------------------ schedule


def test_linear_lr_scaling():
    assert effective_lr(TrainConfig(model="resnet18")) == pytest.approx(3e-4)
    assert effective_lr(TrainConfig(model="resnet18", batch_size=512)) == pytest.approx(3e-4)  # no --scale-lr
    assert effective_lr(TrainConfig(model="resnet18", batch_size=512, scale_lr=True)) == pytest.approx(1.2e-3)
    scaled = TrainConfig(model="resnet18", batch_size=64, scale_lr=True, base_batch_size=256, lr=0.1)
    assert effective_lr(scaled) == pytest.approx(0.025)


def test_warmup_schedule_values():
    config = TrainConfig(model="resnet18", batch_size=512, scale_lr=True, warmup_epochs=1.0)
    assert warmup_steps(config, 10) == 10
    lrs = [lr_at_step(config, step, steps_per_epoch=10) for step in range(13)]
    assert lrs[:10] == pytest.approx([1.2e-3 * (s + 1) / 10 for s in range(10)])
    assert lrs[9:] == pytest.approx([1.2e-3] * 4)
    half = TrainConfig(model="resnet18", warmup_epochs=0.5)
    assert warmup_steps(half, 5) == 3  # ceil(2.5)
    assert [lr_at_step(half, s, 5) for s in range(4)] == pytest.approx([1e-4, 2e-4, 3e-4, 3e-4])
    assert lr_at_step(TrainConfig(model="resnet18"), 0, 5) == pytest.approx(3e-4)


def test_split_compile_time():
    work, compile_s = split_compile_time([(5.0, True), (1.0, False), (1.2, False), (0.8, False)])
    assert compile_s == pytest.approx(4.0) and work == pytest.approx(4.0)
    assert split_compile_time([(1.0, False), (2.0, False)]) == (pytest.approx(3.0), 0.0)


# ------------------------------------------------------------------------------------------ heads


@pytest.mark.parametrize(
    "name, head",
    [
        ("resnet18", lambda m: m.fc),
        ("densenet121", lambda m: m.classifier),
        ("mobilenet_v3_large", lambda m: m.classifier[-1]),
        ("shufflenet_v2_x1_0", lambda m: m.fc),
        ("convnext-seed", lambda m: m.fc),
    ],
)
def test_set_num_classes_replaces_the_last_linear(name, head):
    model = build_model(get_spec(name), 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    old_head = head(model)
    set_num_classes(model, 7)
    assert head(model) is not old_head and head(model).out_features == 7
    assert head(model).in_features == old_head.in_features
    changed = {k for k, v in model.state_dict().items() if k not in before or not torch.equal(v, before[k])}
    assert len(changed) == 2  # only the new head's weight and bias
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 7)


# ------------------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    where = tmp_path_factory.mktemp("train")
    result = run_cli([*QUICK, "--epochs", "2", "--out-dir", "tmp"], cwd=where)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return where, json.loads((where / "tmp" / "metrics.json").read_text())


def test_cli_run_writes_metrics_and_learns(first_run):
    where, metrics = first_run
    epochs = metrics["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for record in epochs:
        assert EPOCH_FIELDS <= record.keys()
        assert record["compile_s"] == 0.0 and record["compute_s"] > 0 and record["data_s"] > 0
        assert record["epoch_s"] >= record["data_s"] + record["compute_s"] + record["eval_s"]
        assert record["images_per_s"] == pytest.approx(256 / record["compute_s"])
        assert record["lr"] == pytest.approx(3e-4)
        assert 0 <= record["top1"] <= record["top5"] <= 1
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[-1]["top1"] > 0.2, "10 classes: chance is 0.1"
    assert metrics["config"]["batch_size"] == 32 and metrics["data"]["num_classes"] == 10
    assert metrics["machine"]["torch"] == torch.__version__ and metrics["machine"]["device"] in ("cpu", "cuda")
    assert metrics["totals"]["epochs"] == 2 and metrics["totals"]["best_top1"] == max(e["top1"] for e in epochs)
    checkpoint = torch.load(where / "tmp" / "last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["step"] == 16 and (where / "tmp" / "best.pt").is_file()
    model = set_num_classes(build_model(get_spec("resnet18"), 32), 10)
    model.load_state_dict(checkpoint["model"])  # plain keys: loads into an uncompiled, plain-BN model


def test_cli_resume_continues_from_the_next_epoch(first_run, tmp_path):
    where, before = first_run
    shutil.copytree(where / "tmp", tmp_path / "tmp")
    result = run_cli([*QUICK, "--epochs", "3", "--out-dir", "tmp", "--resume", "auto"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resuming after epoch 2" in result.stdout
    after = json.loads((tmp_path / "tmp" / "metrics.json").read_text())
    assert [e["epoch"] for e in after["epochs"]] == [1, 2, 3]
    assert after["epochs"][:2] == before["epochs"]
    assert after["totals"]["steps"] == 24 and after["resumed_from"] == str(Path("tmp") / "last.pt")
    # The continued run repeats an uninterrupted 3-epoch run (workers=0: every RNG is in the checkpoint).
    whole = train(
        TrainConfig(
            model="resnet18",
            image_size=32,
            batch_size=32,
            train_samples=256,
            eval_samples=128,
            epochs=3,
            out_dir=str(tmp_path / "whole"),
            quiet=True,
        )
    )
    for field in ("train_loss", "val_loss", "top1"):
        assert after["epochs"][2][field] == pytest.approx(whole["epochs"][2][field], rel=1e-4, abs=1e-6), field


def test_bad_data_path_exits_2_naming_the_folder(tmp_path):
    missing = tmp_path / "no-such-tiny-imagenet"
    result = run_cli(["--model", "resnet18", "--data", f"tinyimagenet:{missing}", "--out-dir", "x"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert str(missing) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(has_cuda(), reason="CUDA is present: --device cuda is valid here")
def test_device_cuda_without_cuda_exits_2(tmp_path, capsys):
    assert main([*QUICK, "--epochs", "1", "--device", "cuda", "--out-dir", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no-such-net"], "valid: "),
        (["--model", "bert-base"], "not an image classifier"),
        (["--model", "convnext-seed", "--image-size", "32", "--ghost-batch-size", "8"], "no BatchNorm2d"),
        (["--model", "resnet18", "--batch-size", "32", "--ghost-batch-size", "12"], "must divide"),
        (["--model", "resnet18", "--data", "imagenet-val"], "unknown data source"),
    ],
)
def test_bad_input_exits_2(args, message, tmp_path, capsys):
    assert main([*args, "--epochs", "1", "--out-dir", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ")
    if message == "valid: ":
        assert "resnet18" in err and "convnext-seed" in err


def test_evaluation_only_source_exits_2(tmp_path, capsys):
    from PIL import Image

    for wnid in ("n01", "n02"):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / wnid / "a.JPEG")
    args = ["--model", "resnet18", "--data", f"imagenet-val:{tmp_path / 'val'}", "--image-size", "32"]
    assert main([*args, "--out-dir", str(tmp_path / "out"), "--quiet"]) == 2
    assert "no train split" in capsys.readouterr().err

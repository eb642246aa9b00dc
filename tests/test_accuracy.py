"""Accuracy columns: top-k, evaluation against eager, the quick profile's trained model, --checkpoint."""

import json

import pytest
import torch

from nn_speedups.measure import accuracy
from nn_speedups.models import build_model, get_spec
from nn_speedups.optimizations.base import Runner
from tests.conftest import ROOT, run_suite


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.3, 0.3, 0.4]])
    labels = torch.tensor([1, 2, 0])
    assert accuracy.topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert accuracy.topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert accuracy.topk_accuracy(logits, labels, 5) is None  # fewer than 5 classes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    accuracy.CHECKPOINT_DIR = str(tmp_path_factory.mktemp("checkpoints"))
    return accuracy.trained_checkpoint("resnet18", 32, "cpu")


def test_trained_checkpoint_is_cached_and_learned(trained):
    mtime = trained.stat().st_mtime
    assert accuracy.trained_checkpoint("resnet18", 32, "cpu") == trained and trained.stat().st_mtime == mtime
    model = build_model(get_spec("resnet18"), 32, weights=str(trained))
    assert model.fc.out_features == 10  # the head follows the checkpoint's classes
    images, labels = accuracy.eval_set("synthetic", 32, 128)
    fields = accuracy.evaluate(Runner(fn=model), model, 16, "cpu", images, labels)
    assert fields["top1_agreement"] == 1.0 and fields["eval_images"] == 128
    assert fields["top1"] == fields["eager_top1"] > 0.25, fields  # 10 classes: chance is 0.1
    assert fields["top5"] >= fields["top1"]


def test_evaluation_drops_the_last_partial_batch_and_skips_foreign_labels(trained):
    model = build_model(get_spec("resnet18"), 32, weights=str(trained))
    images, labels = accuracy.eval_set("synthetic", 32, 50)
    fields = accuracy.evaluate(Runner(fn=model), model, 16, "cpu", images, labels + 100)
    assert fields["eval_images"] == 48 and "top1" not in fields  # labels beyond the model's classes
    untrained = accuracy.evaluate(Runner(fn=model), model, 16, "cpu", images, labels, trained=False)
    assert "top1" not in untrained and untrained["top1_agreement"] == 1.0  # random weights: agreement only


def test_checkpoint_gives_every_variant_accuracy_columns(trained, tmp_path):
    out = tmp_path / "run.json"
    result = run_suite(
        [str(ROOT / "benches" / "test_inference.py"), "--rootdir", str(ROOT), "-k", "test_inference",
         "--checkpoint", str(trained), "--batch-sizes", "4", "--variants", "eager,amp-bf16",
         "--eval-samples", "64", f"--benchmark-json={out}", "--report-dir", str(tmp_path / "reports")],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]]
    assert {r["model"] for r in rows} == {"resnet18"} and {r["image_size"] for r in rows} == {32}
    for r in rows:
        assert r["top1"] > 0.25 and r["top5"] >= r["top1"] and r["eval_images"] == 64 and r["weights"] == str(trained)
    assert "top-1" in result.stdout and "agrees with eager" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "missing.pt"], "--checkpoint missing.pt: no such file"),
        (["--checkpoint", "x.pt", "--weights", "y.pt"], "give --weights or --checkpoint, not both"),
    ],
)
def test_bad_checkpoint_is_a_usage_error(args, message, tmp_path):
    result = run_suite([str(ROOT / "benches"), "--rootdir", str(ROOT), "--collect-only", "-q", *args], cwd=tmp_path)
    assert result.returncode == 4 and message in result.stderr, result.stderr

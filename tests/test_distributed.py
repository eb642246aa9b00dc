"""Data-parallel training on torch.distributed (CPU, gloo, 2 single-threaded processes, tiny models): the bench family
end to end (a DDP step equals one process's, rounds in pytest-benchmark, the scaling report), FSDP2's code path, a
2-process `torchrun -m nn_speedups.train` resumed at world size 1, and robustness: a rank that raises, is killed or
hangs
ends the whole job within a timeout with that rank's error, and leaves no process behind."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import uuid

import psutil
import pytest
import torch
import torch.nn.functional as F

from nn_speedups.core import capabilities
from nn_speedups.distributed import (
    DistributedJobError,
    TorchrunMissing,
    check_launch,
    launch,
    leftover_processes,
    torchrun_command,
    world_size_problem,
)
from nn_speedups.distributed.bench import (
    Scaling,
    launch_job,
    make_job,
    parse_world_sizes,
    scaling_points,
    slowest_rank_times,
)
from nn_speedups.distributed.worker import covered
from nn_speedups.matrix.variant import Variant
from nn_speedups.measure.correctness import CorrectnessError, check_distributed_step
from nn_speedups.models import build_model, get_spec
from nn_speedups.optimizations.distributed import full_gradients, full_parameters, step_apply
from tests.conftest import ROOT, run_suite

pytestmark = pytest.mark.skipif(
    capabilities.missing_requirement("torchrun") is not None or (os.cpu_count() or 1) < 2,
    reason="needs torch.distributed (gloo) and 2 CPU cores",
)

FAULT_JOB = str(ROOT / "tests" / "dist_fault_job.py")
# launcher and subprocess timeouts: hang guards, far beyond what any of these jobs takes on a slow machine; no verdict
# here depends on how long anything took
HANG_GUARD_S = 300
TINY_TIMING = {"warmup_rounds": 1, "budget_s": 0.0, "min_rounds": 2, "max_rounds": 2}


def _marked_processes(token: str) -> list[str]:
    """Processes anywhere in the process table whose command line carries `token`."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and token in " ".join(p.info["cmdline"] or []):
                found.append(f"{p.info['pid']} {' '.join(p.info['cmdline'])[:100]}")
        except psutil.NoSuchProcess:
            pass
    return found


def _wait_gone(token: str, timeout_s: float) -> list[str]:
    """Poll until no live process (zombies count as gone) carries `token`, for at most `timeout_s` (a hang guard);
    those still alive."""
    deadline = time.monotonic() + timeout_s
    while _marked_processes(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _marked_processes(token)


def _kill_marked(token: str) -> None:
    """Leave no test process behind, whatever the verdict."""
    for p in psutil.process_iter(["cmdline"]):
        try:
            if token in " ".join(p.info["cmdline"] or []):
                p.kill()
        except psutil.NoSuchProcess:
            pass


# ------------------------------------------------------------------------------------------- the bench family


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """The real family in a fresh pytest session: convnext-seed at 32x32, batch 4, ddp at world sizes 1 and 2 (and
    64, which this machine cannot hold)."""
    where = tmp_path_factory.mktemp("dist_bench")
    out = where / "run.json"
    args = [str(ROOT / "benches" / "test_distributed.py"), "--rootdir", str(ROOT), "--models", "convnext-seed",
            "--image-size", "32", "--batch-sizes", "4", "--world-sizes", "1,2,64", "--variants", "ddp",
            f"--benchmark-json={out}", "--report-dir", str(where / "reports"), "-rs"]  # fmt: skip
    result = run_suite(args, cwd=where, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result, json.loads(out.read_text()), where


def test_ddp_step_equals_one_process_and_rounds_reach_pytest_benchmark(bench_run):
    result, run, _ = bench_run
    rows = {b["extra_info"]["scaling"] + str(b["extra_info"]["world_size"]): b for b in run["benchmarks"]}
    assert set(rows) == {"reference1", "weak2", "strong2"}
    for bench in rows.values():
        info, stats = bench["extra_info"], bench["stats"]
        # correctness before timing, inside the job: same loss, gradient and update as one process; ranks agree
        assert info["check"] == "distributed-exact" and info["check_reference"] == "one process, whole batch"
        assert info["loss_rel_err"] <= 1e-4 and info["update_rel_err"] <= 1e-3 and info["rank_param_spread"] == 0
        assert info["grad_cosine"] > 0.999999
        # the slowest rank's per-step times are pytest-benchmark's rounds
        assert stats["rounds"] == info["rounds"] >= 5
        assert stats["median"] == pytest.approx(info["median_ms"] / 1e3)
        assert info["images_per_s"] == pytest.approx(info["global_batch_size"] / stats["median"])
        assert len(info["images_per_s_by_rank"]) == len(info["peak_host_mb_by_rank"]) == info["world_size"]
        assert info["backend"] == "gloo" and info["threads"] == 1 and info["peak_device_mb"] is None
        assert 0 <= info["comm_share"] < 1 and info["peak_host_mb"] > 0
    weak, strong, ref = rows["weak2"]["extra_info"], rows["strong2"]["extra_info"], rows["reference1"]["extra_info"]
    assert (weak["per_rank_batch_size"], weak["global_batch_size"]) == (4, 8)
    assert (strong["per_rank_batch_size"], strong["global_batch_size"]) == (2, 4)
    assert ref["scaling_efficiency"] == 1.0 and ref["speedup_vs_eager"] == 1.0
    for info in (weak, strong):
        assert info["scaling_efficiency"] == pytest.approx(info["images_per_s"] / (2 * ref["images_per_s"]))
        assert info["speedup_vs_eager"] == pytest.approx(info["images_per_s"] / ref["images_per_s"])
        assert info["comm_share"] > 0, "two ranks all-reduce gradients in every step"
    assert weak["comm_ms"] > 0 and ref["comm_share"] < weak["comm_share"]
    assert "world size 64 needs 64 CPU cores" in result.stdout  # skipped with the reason; the rest ran
    names = {b["name"] for b in run["benchmarks"]}
    assert "test_distributed[convnext-seed-bs4-ddp-fp32-ws2-weak]" in names


def test_scaling_report_has_the_table_and_the_plot(bench_run):
    result, _, where = bench_run
    assert "### distributed: convnext-seed, batch 4, image 32 (cpu, gloo, 1 thread(s) per rank)" in result.stdout
    assert "| ddp-fp32 | 2 | weak | 4 / 8 |" in result.stdout
    assert list((where / "reports").glob("*-scaling.png"))
    assert not list((where / "reports").glob("*-speedup.png"))  # distributed rows stay out of the speedup plot


def test_fsdp2_step_equals_one_process_on_gloo():
    """FSDP2 is a GPU variant in the bench; its code path (fully_shard per block, whole gradients and parameters
    gathered from the shards) runs on gloo too, so it is checked here."""
    variant = Variant("fsdp2", step_apply(wrapper="fsdp2"), check="exact")
    job = make_job("convnext-seed", 32, 2, 2, variant, "cpu", 1, 300, TINY_TIMING)
    job["points"] = job["points"][:1]
    out = launch_job(job, 300)
    assert out["ok"], out.get("error")
    assert out["info"]["wrapper"] == "fsdp2" and out["info"]["fsdp_units"] > 1
    assert out["check"]["loss_rel_err"] <= 1e-4 and out["check"]["update_rel_err"] <= 1e-3
    assert out["params"] == sum(p.numel() for p in build_model(get_spec("convnext-seed"), 32).parameters())
    assert leftover_processes(set(out["pids"])) == []


def test_the_step_check_fails_when_ranks_do_not_average_their_gradients():
    """What a rank that skipped the all-reduce would hold: its own half-batch gradient. The check must refuse it,
    with the numbers."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GELU(), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])
    model(images)  # materializes the lazy layer

    def step(x, y) -> dict:
        net = copy.deepcopy(model)
        before = full_parameters(net)
        optimizer = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=0.01)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item(), "grads": full_gradients(net), "update": full_parameters(net) - before}

    whole, half = step(images, labels), step(images[:2], labels[:2])
    assert check_distributed_step(whole, whole, "exact", 0.0)["grad_rel_err"] == 0
    with pytest.raises(CorrectnessError, match=r"loss differs by .* grad_rel_err"):
        check_distributed_step(half, whole, "exact", 0.0, label="no-allreduce")
    with pytest.raises(CorrectnessError, match="ranks disagree after the step: max .param - rank 0's. 1e-06"):
        check_distributed_step(whole, whole, "exact", 1e-6)


# ------------------------------------------------------------------------------------------- nn_speedups.train


def test_torchrun_harness_train_two_ranks_then_resume_at_world_size_one(tmp_path):
    common = ["--model", "resnet18", "--data", "synthetic", "--image-size", "32", "--batch-size", "16",
              "--train-samples", "128", "--eval-samples", "32", "--out-dir", str(tmp_path / "out"), "--scale-lr",
              "--base-batch-size", "16"]  # fmt: skip
    target = ["-m", "nn_speedups.train", *common, "--epochs", "1"]
    started = check_launch(launch(target, 2, timeout_s=300, log_dir=tmp_path / "logs", cwd=tmp_path))
    assert leftover_processes(started.pids) == []
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distributed"] == {
        "world_size": 2,
        "backend": "gloo",
        "per_rank_batch_size": 16,
        "global_batch_size": 32,
    }
    assert metrics["optimizer"]["lr_effective"] == pytest.approx(3e-4 * 32 / 16)  # --scale-lr: the global batch
    epoch = metrics["epochs"][0]
    assert epoch["steps"] == 4 and epoch["train_images"] == 128  # every image once per epoch, over both ranks
    assert epoch["val_images"] == 32 and 0 <= epoch["top1"] <= 1
    assert started.stdout.count("epoch 1/1 train_loss") == 1, "rank 0 alone prints"
    checkpoint = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in checkpoint["model"]), "the unwrapped model's state dict"
    # resume without torchrun (world size 1): the next epoch, 8 steps of 16, lr scaled to the batch of 16
    resumed = subprocess.run(
        [sys.executable, "-m", "nn_speedups.train", *common, "--epochs", "2", "--resume", "auto"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = json.loads((out / "metrics.json").read_text())
    assert "resuming after epoch 1" in resumed.stdout and after["distributed"] is None
    assert [e["epoch"] for e in after["epochs"]] == [1, 2] and after["epochs"][0] == epoch
    assert after["epochs"][1]["steps"] == 8 and after["epochs"][1]["lr"] == pytest.approx(3e-4)


# ------------------------------------------------------------------------------------------- robustness


@pytest.mark.parametrize(
    "mode, group_timeout, expected",
    [
        # exit code 1, or SIGABRT when the group's teardown at exit finds the others' collective pending; the group's
        # timeout plays no part (long, so that ranks started far apart on a loaded machine still join)
        (
            "raise",
            "120",
            r"^rank 1 \(pid \d+\) failed \(exit code (1|-6, SIGABRT)\): RuntimeError: rank 1 raised at step 2",
        ),
        ("kill", "120", r"^rank 1 \(pid \d+\) failed \(exit code -9, SIGKILL\): Signal 9 \(SIGKILL\) received"),
        # rank 1 hangs: rank 0's collective times out (after 3 s), and rank 1, still running, is stopped
        (
            "hang",
            "3",
            r"^rank 0 \(pid \d+\) failed \(exit code 1\): .*Timed out.*; still running when the job was stopped: "
            r"rank 1",
        ),
    ],
)
def test_a_failing_or_hanging_rank_ends_the_job_with_its_error_and_no_orphans(mode, group_timeout, expected, tmp_path):
    """The job ends by itself (the failing rank, or the group's collective timeout when a rank hangs): launch
    returns its result instead of killing it at the launcher's timeout, which is only a hang guard here."""
    token = uuid.uuid4().hex
    target = [FAULT_JOB, "--mode", mode, "--rank", "1", "--step", "2", "--timeout", group_timeout, "--token", token]
    try:
        result = launch(target, 2, timeout_s=HANG_GUARD_S, log_dir=tmp_path)
    except DistributedJobError as error:
        _kill_marked(token)
        pytest.fail(f"the job did not end by itself; the launcher's hang guard stopped it: {str(error)[:2000]}")
    with pytest.raises(DistributedJobError, match=expected) as error:
        check_launch(result)
    assert "Root Cause" not in str(error.value).splitlines()[0]
    assert leftover_processes(result.pids) == [] and _marked_processes(token) == []


def test_a_stalled_job_is_killed_at_the_launch_timeout_with_all_its_processes(tmp_path):
    """Every rank sleeps for an hour outside any collective: only the launcher's timeout (8 s) can end the job. It
    must say so and leave none of the job's processes behind; how long the kill took is not the question."""
    token = uuid.uuid4().hex
    target = [FAULT_JOB, "--mode", "stall", "--step", "1", "--timeout", "600", "--token", token]
    with pytest.raises(DistributedJobError, match=r"torchrun job timed out after 8 s \(2 ranks\): killed it and its"):
        launch(target, 2, timeout_s=8, log_dir=tmp_path)
    # SIGKILLed processes leave the table once the kernel has torn them down: wait for that (a hang guard only)
    survivors = _wait_gone(token, HANG_GUARD_S)
    _kill_marked(token)
    assert survivors == [], "the ranks run in sessions of their own: they must be killed too"


# ------------------------------------------------------------------------------------------- bad input, units


def test_world_size_above_the_machine_and_bad_world_sizes():
    assert world_size_problem(2, "cpu") is None
    assert world_size_problem(4096, "cpu").startswith("world size 4096 needs 4096 CPU cores")
    assert "GPUs (one process per GPU); this machine has" in world_size_problem(4096, "cuda")
    assert parse_world_sizes("2,1,2") == (1, 2)
    for bad in ("0", "1,x", ""):
        with pytest.raises(ValueError, match="--world-sizes .*: give positive integers"):
            parse_world_sizes(bad)


def test_torchrun_missing_skips_with_the_fix(monkeypatch):
    monkeypatch.setenv("TORCHRUN", "/no/such/torchrun --flag")
    reason = capabilities.missing_requirement("torchrun")
    assert reason.startswith("TORCHRUN='/no/such/torchrun --flag': no such executable; point TORCHRUN at torchrun")
    with pytest.raises(TorchrunMissing):
        launch(["-m", "nn_speedups.distributed"], 1, timeout_s=10)
    monkeypatch.delenv("TORCHRUN")
    assert torchrun_command()[-2:] == ["-m", "torch.distributed.run"]


def test_scaling_points_and_slowest_rank():
    assert [p.id for p in scaling_points((1, 2, 4))] == ["ws1", "ws2-weak", "ws2-strong", "ws4-weak", "ws4-strong"]
    assert Scaling(4, "strong").per_rank_batch(64) == 16 and Scaling(4, "weak").per_rank_batch(64) == 64
    assert slowest_rank_times({"rank_times_s": [[1.0, 3.0], [2.0, 1.0]]}) == [2.0, 3.0]


def test_communication_spans_are_counted_once_and_clipped_to_the_step():
    assert covered((0, 100), [(10, 30), (20, 40), (90, 150), (-5, 5)]) == 30 + 10 + 5
    assert covered((0, 100), []) == 0

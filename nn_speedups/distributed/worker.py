"""One data-parallel bench case, run by every rank of a torchrun job (nn_speedups.distributed.bench launches it):

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m nn_speedups.distributed.worker \\
        --job JOB.json --out RESULT.json

1. Correctness before timing: from the same weights, on one global batch split over the ranks (at most
   CHECK_PER_RANK images each), one step of the variant is compared (on rank 0) with one process's step on the whole
   batch: the ranks' mean loss, the averaged gradient and the parameter update
   (nn_speedups.measure.correctness.check_distributed_step); the ranks must hold the same parameters afterwards. A model
   with batch norm is compared with one process that normalizes each rank's share apart, which is what DDP computes
   (per-rank batch statistics; SyncBatchNorm would make it the whole batch).
2. Per scaling point (per-rank batch): warm-up, then timed steps, each started together on every rank (a barrier,
   outside the timed region) and ended by a device synchronize; the rounds are chosen from the slowest rank's
   warm-up and are the same on every rank. Then one profiled step: the share of its wall time during which
   communication ran (gloo collectives' spans on a CPU, NCCL kernels on a GPU; overlapping spans counted once).
   Peak memory per rank: CUDA allocator peak, and host RSS.
3. Rank 0 writes the gathered per-rank figures as JSON; nn_speedups.distributed.bench turns them into the case's record.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record

from nn_speedups.distributed import Rank, init_group
from nn_speedups.measure import metrics, timing
from nn_speedups.measure.correctness import CorrectnessError, check_distributed_step
from nn_speedups.models import build_model, get_spec
from nn_speedups.models.user import reload
from nn_speedups.optimizations import distributed as dp
from nn_speedups.optimizations.base import NotEngagedError

STEP_MARK = "nn_speedups::step"
# The check's per-rank batch (at most the timed one): the one-process reference runs the whole global batch on one
# device, which at 8 GPUs x 64 images would not fit; equality does not depend on the batch size.
CHECK_PER_RANK = 4


def global_batch(spec, batch: int, image_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same global batch on every rank: seeded images and labels, on the CPU."""
    images = spec.example_inputs(batch, image_size, "cpu", seed=seed)[0]
    labels = torch.randint(0, spec.num_classes, (batch,), generator=torch.Generator().manual_seed(seed))
    return images, labels


def rank_share(batch: tuple, group: Rank, per_rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    start = group.rank * per_rank
    return tuple(t[start : start + per_rank].to(group.device) for t in batch)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def reference_step(model: nn.Module, images, labels, chunks: int, config: dp.DistConfig) -> dict:
    """One process's fp32 step on the whole batch: the loss is the mean of `chunks` equal shares' mean losses (one
    share, the plain full-batch loss, for models without batch norm), AdamW as the variant's."""
    net = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    before = dp.full_parameters(net)
    optimizer.zero_grad(set_to_none=True)
    losses = [F.cross_entropy(net(x), y) for x, y in zip(images.chunk(chunks), labels.chunk(chunks), strict=True)]
    loss = torch.stack(losses).mean()
    loss.backward()
    optimizer.step()
    return {"loss": loss.item(), "grads": dp.full_gradients(net), "update": dp.full_parameters(net) - before}


def rank_spread(params: torch.Tensor, group: Rank) -> float:
    """max |param on any rank - param on rank 0|."""
    mine = params.to(group.device)
    first = mine.clone()
    dist.broadcast(first, src=0)
    spread = (mine - first).abs().max().reshape(1)
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    return spread.item()


def check(model: nn.Module, spec, job: dict, group: Rank, config: dp.DistConfig):
    """Correctness before timing; returns (runner, first step seconds, check fields or the failure message)."""
    per_rank = min(job["points"][0]["per_rank_batch"], CHECK_PER_RANK)
    images, labels = global_batch(spec, per_rank * group.world_size, job["image_size"], seed=0)
    chunks = group.world_size if has_batch_norm(model) else 1
    ref = None
    if group.is_main:
        ref = reference_step(model, images.to(group.device), labels.to(group.device), chunks, config)
    before = dp.full_parameters(model)
    local = rank_share((images, labels), group, per_rank)
    runner = dp.apply(model, local, config)
    sync = timing.synchronizer(str(group.device))
    dist.barrier()
    start = time.perf_counter()
    loss = runner(*local)
    sync()
    first_step_s = time.perf_counter() - start
    failure = None
    try:
        runner.verify()
    except NotEngagedError as error:
        failure = f"{job['variant']}: {error}"
    grads = dp.full_gradients(runner.model)
    after = dp.full_parameters(runner.model)
    mean_loss = loss.float().reshape(1).clone()
    dist.all_reduce(mean_loss)
    spread = rank_spread(after, group)
    outcome = None
    if group.is_main:
        got = {"loss": mean_loss.item() / group.world_size, "grads": grads, "update": after - before}
        try:
            fields = check_distributed_step(got, ref, job["check"], spread, label=f"{job['variant']}")
            fields["check_reference"] = f"one process, {'per-rank BN shares' if chunks > 1 else 'whole batch'}"
            outcome = failure or fields
        except CorrectnessError as error:
            outcome = str(error)
    shared = [outcome]
    dist.broadcast_object_list(shared, src=0)
    return runner, first_step_s, shared[0]


def comm_spans(events, backend: str) -> tuple[tuple[float, float] | None, list[tuple[float, float]]]:
    """(the marked step's span, communication spans) from profiler events, in microseconds."""
    from torch.autograd import DeviceType

    window, spans = None, []
    for e in events:
        name = e.name
        if name == STEP_MARK and e.device_type == DeviceType.CPU:
            window = (e.time_range.start, e.time_range.end)
        elif backend == "nccl" and e.device_type == DeviceType.CUDA and "nccl" in name.lower():
            spans.append((e.time_range.start, e.time_range.end))
        elif backend == "gloo" and name.startswith("gloo:") and "barrier" not in name:
            spans.append((e.time_range.start, e.time_range.end))
    return window, spans


def covered(window: tuple[float, float], spans: list[tuple[float, float]]) -> float:
    """Length of the union of `spans` clipped to `window`."""
    clipped = sorted((max(a, window[0]), min(b, window[1])) for a, b in spans if b > window[0] and a < window[1])
    total, end = 0.0, window[0]
    for a, b in clipped:
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def profiled_step(runner, inputs, group: Rank, sync) -> dict:
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if group.device.type == "cuda" else [])
    barrier(group)
    with profile(activities=activities) as prof:
        with record_function(STEP_MARK):
            runner(*inputs)
            sync()
    window, spans = comm_spans(prof.events(), group.backend)
    if window is None:
        return {"comm_ms": None, "step_ms": None, "share": None}
    comm_us = covered(window, spans)
    step_us = window[1] - window[0]
    return {"comm_ms": comm_us / 1e3, "step_ms": step_us / 1e3, "share": comm_us / step_us if step_us else None}


def barrier(group: Rank) -> None:
    if group.backend == "nccl":
        dist.barrier(device_ids=[group.local_rank])
        torch.cuda.synchronize(group.device)
    else:
        dist.barrier()


def measure_point(runner, spec, job: dict, point: dict, group: Rank) -> dict:
    per_rank = point["per_rank_batch"]
    inputs = rank_share(global_batch(spec, per_rank * group.world_size, job["image_size"], seed=1), group, per_rank)
    sync = timing.synchronizer(str(group.device))
    t = job["timing"]

    def timed() -> float:
        barrier(group)
        start = time.perf_counter()
        runner(*inputs)
        sync()
        return time.perf_counter() - start

    with metrics.HostPeak() as host, metrics.DevicePeak(str(group.device)) as device_peak:
        warm = [timed() for _ in range(max(1, t["warmup_rounds"]))]
        slowest = torch.tensor([min(warm)], dtype=torch.float64, device=group.device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # every rank must run the same number of rounds
        rounds = timing.choose_rounds(slowest.item(), t["budget_s"], t["min_rounds"], t["max_rounds"])
        times = [timed() for _ in range(rounds)]
        comm = profiled_step(runner, inputs, group, sync)
    mine = {"times": times, "host_mb": host.peak_mb, "device_mb": device_peak.peak_mb, "comm": comm, "first": warm[0]}
    ranks: list = [None] * group.world_size
    dist.all_gather_object(ranks, mine)
    return {
        "per_rank_batch": per_rank,
        "rank_times_s": [r["times"] for r in ranks],
        "peak_host_mb": [r["host_mb"] for r in ranks],
        "peak_device_mb": [r["device_mb"] for r in ranks],
        "comm": [r["comm"] for r in ranks],
        "first_warmup_s": max(r["first"] for r in ranks),  # a compiled step recompiles for a new batch size here
    }


def run(job: dict, group: Rank) -> dict:
    if group.world_size != job["world_size"]:
        raise ValueError(f"the job is for {job['world_size']} ranks, torchrun started {group.world_size}")
    if job.get("user_model"):
        reload(job["user_model"])
    spec = get_spec(job["model"])
    model = build_model(spec, job["image_size"], weights=job.get("weights")).to(group.device).train()
    config = dp.DistConfig(**job["config"])
    runner, first_step_s, outcome = check(model, spec, job, group, config)
    if isinstance(outcome, str):
        return {"ok": False, "error": outcome}
    del model
    points = {point["kind"]: measure_point(runner, spec, job, point, group) for point in job["points"]}
    firsts: list = [None] * group.world_size
    dist.all_gather_object(firsts, first_step_s)
    name = torch.cuda.get_device_name(group.device) if group.device.type == "cuda" else None
    return {
        "ok": True,
        "world_size": group.world_size,
        "backend": group.backend,
        "device_name": name,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in runner.model.parameters()),
        "first_step_s": max(firsts),
        "check": outcome,
        "info": runner.info,
        "points": points,
    }


@record
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nn_speedups.distributed.worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--job", required=True, help="the job's JSON (written by nn_speedups.distributed)")
    parser.add_argument("--out", required=True, help="where rank 0 writes the results")
    args = parser.parse_args(argv)
    job = json.loads(Path(args.job).read_text())
    torch.set_num_threads(job["threads"])
    group = init_group(job["device"], job["timeout_s"])
    result = run(job, group)
    if group.is_main:
        partial = Path(args.out + ".partial")
        partial.write_text(json.dumps(result))
        partial.replace(args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""Data-parallel training steps on torch.distributed (seed 001: "reducing runtime even further could be achieved by
extending to multi GPU training"): convnext-seed and resnet50 under DistributedDataParallel, each case one `torchrun`
job (nn_speedups.distributed), gloo on a CPU (one single-threaded process per core), NCCL on GPUs (one process per GPU).

Measures, per world size (`--world-sizes`, default 1,2): the slowest rank's step time per step (pytest-benchmark's
rounds, so --benchmark-compare gates it), total and per-rank images/s, scaling efficiency against world size 1 of
the same variant at the same per-rank batch (`ws2-weak`: the global batch grows) and at the same global batch
(`ws2-strong`: the ranks share it), the share of a profiled step's wall time spent in communication (`comm_share`),
peak memory per rank, compile time apart. `speedup_vs_eager` is total images/s over `ddp` at world size 1.

Correctness, before timing, inside the job: from the same weights on the same global batch, one step of the variant
gives the same loss (the ranks' mean), averaged gradient and parameter update as one process's step on the whole
batch (exact: fp32 tolerances; lowp for AMP and bf16 gradient compression: cosine >= 0.99), and every rank holds
the same parameters afterwards (nn_speedups/measure/correctness.py: check_distributed_step). resnet50's batch norm uses
each rank's own statistics under DDP, so its reference normalizes each rank's share apart.

    pytest benches/test_distributed.py --benchmark-autosave
    pytest benches/test_distributed.py --models resnet50 --world-sizes 1,2,4,8 --batch-sizes 64 --profile full
"""

from __future__ import annotations

from nn_speedups.distributed.bench import DDP
from nn_speedups.matrix.declare import matrix
from nn_speedups.matrix.variant import Variant
from nn_speedups.optimizations.distributed import step_apply

DIST = ("torchrun",)

VARIANTS = [
    DDP,
    Variant("ddp-compile", step_apply(compile=True), check="exact", marks=(*DIST, "slow"), compiles=True),
    Variant("ddp-amp", step_apply(amp=True), check="lowp", dtype="lowp", marks=DIST),
    Variant("ddp-bf16-compress", step_apply(comm_hook="bf16"), check="lowp", marks=DIST),
    Variant("ddp-bucket-1mb", step_apply(bucket_cap_mb=1.0), check="exact", marks=(*DIST, "slow")),
    Variant("ddp-bucket-100mb", step_apply(bucket_cap_mb=100.0), check="exact", marks=(*DIST, "slow")),
    Variant("fsdp2", step_apply(wrapper="fsdp2"), check="exact", marks=(*DIST, "gpu")),
]


@matrix(VARIANTS, models=["convnext-seed", "resnet50"], training=True)
def test_distributed(case, scaling, measure_distributed):
    measure_distributed(case, scaling)

"""A tiny torchrun job for tests/test_distributed.py: ranks join a gloo group through nn_speedups.distributed.init_group
(the process-group timeout the bench and nn_speedups.train use) and all-reduce once per step; one rank misbehaves at a
chosen step. Test-only: nothing else reads these options.

    torchrun --nproc-per-node 2 tests/dist_fault_job.py --mode raise --rank 1 --step 2 --timeout 3 --token T

modes: ok (no fault), raise (an exception), kill (SIGKILL to itself), hang (sleeps while the others wait in the
collective: their timeout fires), stall (every rank sleeps outside any collective: only the launcher's timeout ends
it). --token only marks the processes so a test can find them in the process table.
"""

import argparse
import os
import signal
import time

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from nn_speedups.distributed import init_group


@record
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["ok", "raise", "kill", "hang", "stall"], required=True)
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--step", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--token", default="")
    args = parser.parse_args()
    group = init_group("cpu", args.timeout)
    x = torch.ones(4)
    for step in range(args.steps):
        if step == args.step and (group.rank == args.rank or args.mode == "stall"):
            if args.mode == "raise":
                raise RuntimeError(f"rank {group.rank} raised at step {step} (test fault)")
            if args.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if args.mode in ("hang", "stall"):
                time.sleep(3600)
        dist.all_reduce(x)
    print(f"rank {group.rank} done: {x.tolist()}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

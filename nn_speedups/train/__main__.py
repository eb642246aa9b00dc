import sys

from torch.distributed.elastic.multiprocessing.errors import record

from nn_speedups.train.cli import main

# under torchrun, record() writes an uncaught exception to the rank's error file: torchrun reports it as the root cause
sys.exit(record(main)())

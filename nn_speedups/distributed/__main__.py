import sys

from nn_speedups.distributed import main

sys.exit(main())

import sys

from nn_speedups.gate import main

sys.exit(main())

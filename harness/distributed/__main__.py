import sys

from harness.distributed import main

sys.exit(main())

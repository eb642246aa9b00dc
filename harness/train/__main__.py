import sys

from harness.train.cli import main

sys.exit(main())

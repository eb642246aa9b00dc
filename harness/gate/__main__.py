import sys

from harness.gate import main

sys.exit(main())

"""`python3 -m kernel_warmer ...`: how the injected init container starts the warmer."""

import sys

from kernel_warmer.cli import main

if __name__ == "__main__":
    sys.exit(main())

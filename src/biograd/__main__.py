"""``python -m biograd``: the same command line as the ``biograd`` console script."""

import sys

from biograd.cli import main

if __name__ == "__main__":
    sys.exit(main())

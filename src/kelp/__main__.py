"""``python -m kelp``: the same command line as ``kelp``."""

import sys

from kelp.cli import main

if __name__ == "__main__":
    sys.exit(main())

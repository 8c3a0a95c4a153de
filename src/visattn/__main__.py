"""`python -m visattn ...` runs the command line, like the `visattn` script."""

import sys

from visattn.cli import main

if __name__ == "__main__":
    sys.exit(main())

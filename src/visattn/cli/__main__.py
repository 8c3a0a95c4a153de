"""``python -m visattn.cli`` (and ``torchrun -m visattn.cli``) runs the command line."""

import sys

from visattn.cli import main

sys.exit(main())

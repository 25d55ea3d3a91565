"""`python -m recsys_mtl` runs the command line."""

import sys

from recsys_mtl.cli import main

sys.exit(main())

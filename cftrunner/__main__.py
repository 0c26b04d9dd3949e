"""`python -m cftrunner` runs the command line."""

import sys

from cftrunner.cli import main

sys.exit(main())

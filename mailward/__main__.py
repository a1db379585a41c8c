"""`python -m mailward` runs the CLI, as the `mailward` console script does."""

import sys

from mailward.cli import main

sys.exit(main())

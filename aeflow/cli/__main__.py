"""`python -m aeflow.cli`: the console script without an installed entry point."""
import sys

from aeflow.cli import main

sys.exit(main())

import sys

from reconciler.cli import run

sys.exit(run())

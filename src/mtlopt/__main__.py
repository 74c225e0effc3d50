"""``python -m mtlopt``: the same as the ``mtlopt`` command."""

import sys

from mtlopt.benchmarks.cli import main

sys.exit(main())

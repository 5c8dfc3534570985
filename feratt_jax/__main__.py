"""``python -m feratt_jax``: the same command line as ``feratt``."""

import sys

from feratt_jax.cli import main

sys.exit(main())

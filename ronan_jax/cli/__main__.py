"""``python -m ronan_jax.cli``."""

import sys

from ronan_jax.cli import main

sys.exit(main())

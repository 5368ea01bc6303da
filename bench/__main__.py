"""``python -m bench [--quick] [--only NAME ...] [--json PATH]``: see bench/README.md."""

import sys

from bench._cli import main

sys.exit(main())

"""Same as ``python -m bench``; also works as ``python bench/run.py`` from anywhere."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._cli import main

if __name__ == "__main__":
    sys.exit(main())

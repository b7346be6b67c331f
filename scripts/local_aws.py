#!/usr/bin/env python3
"""python scripts/local_aws.py install|start|stop|status|env: the local AWS by hand.

The same command as `python -m localaws ...` (the Makefile and README use this
path); the code is the `localaws` package at the repository root.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # localaws is not installed

from localaws.cli import main

if __name__ == "__main__":
    sys.exit(main())

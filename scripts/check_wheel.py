#!/usr/bin/env python3
"""`make lint`: build the wheel and check what it installs.

The test fakes (wheelfilter.TEST_ONLY_MODULES) must not be in it; every other
module of auth/, transfer/ and daemon/ must. A few seconds: pip builds the
wheel in an isolated environment, into a temporary directory.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # wheelfilter.py is at the root, not installed

from wheelfilter import TEST_ONLY_MODULES  # noqa: E402

FOLDERS = {"s3feed.auth": "auth", "s3feed.transfer": "transfer", "s3feed.daemon": "daemon"}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="s3feed-wheel-") as out:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
             "--disable-pip-version-check", "-w", out, str(REPO)],
            check=True,
        )  # fmt: skip
        (wheel,) = Path(out).glob("s3feed-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
    problems = []
    for package, folder in FOLDERS.items():
        for source in sorted((REPO / folder).glob("*.py")):
            path = package.replace(".", "/") + "/" + source.name
            test_only = (package, source.stem) in TEST_ONLY_MODULES
            if test_only and path in names:
                problems.append(f"{path}: a test fake, but in the wheel")
            elif not test_only and path not in names:
                problems.append(f"{path}: missing from the wheel")
    for line in problems:
        print(f"check_wheel: {line}", file=sys.stderr)
    if not problems:
        print(f"check_wheel: {wheel.name} has no test fakes ({len(names)} files)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

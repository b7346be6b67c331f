#!/usr/bin/env python3
"""`make lint`: build the wheel and compare its files with scripts/wheel-files.txt.

The list is the product, file by file: every module of auth/, client/,
transfer/ and daemon/ with their data files, and nothing else (test fakes
live in tests/fakes/, which no package maps). A module added or removed
changes the list in the same commit: `scripts/check_wheel.py --update`
rewrites it, and the diff shows a reviewer what the wheel gains.
A few seconds: pip builds the wheel in an isolated environment.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LISTED = REPO / "scripts" / "wheel-files.txt"


def wheel_files() -> list[str]:
    with tempfile.TemporaryDirectory(prefix="s3feed-wheel-") as out:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--quiet",
                "--disable-pip-version-check",
                "-w",
                out,
                str(REPO),
            ],
            check=True,
        )
        (wheel,) = Path(out).glob("s3feed-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
    # dist-info's names carry the version; data files are pyproject's [data-files]
    return sorted(n for n in names if n.startswith("s3feed/"))


def main(argv: list[str]) -> int:
    files = wheel_files()
    if argv[1:] == ["--update"]:
        LISTED.write_text("".join(f"{n}\n" for n in files))
        print(f"check_wheel: wrote {len(files)} files to {LISTED.relative_to(REPO)}")
        return 0
    listed = LISTED.read_text().split()
    extra = sorted(set(files) - set(listed))
    missing = sorted(set(listed) - set(files))
    for name in extra:
        print(f"check_wheel: {name}: in the wheel, not in {LISTED.name}", file=sys.stderr)
    for name in missing:
        print(f"check_wheel: {name}: in {LISTED.name}, not in the wheel", file=sys.stderr)
    if extra or missing:
        print(
            "check_wheel: a module added or removed on purpose? run scripts/check_wheel.py --update",
            file=sys.stderr,
        )
        return 1
    print(f"check_wheel: the wheel holds exactly the {len(files)} listed files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

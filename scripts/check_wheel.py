#!/usr/bin/env python3
"""`make lint`: build the wheel and compare its files with scripts/wheel-files.txt.

The list is the product, file by file: every module of auth/, client/,
transfer/ and daemon/ with their data files, and nothing else (test fakes
live in tests/fakes/, which no package maps). A module added or removed
changes the list in the same commit: `scripts/check_wheel.py --update`
rewrites it, and the diff shows a reviewer what the wheel gains.
A few seconds: pip builds the wheel in an isolated environment, from a copy
of the files git would see (tracked or not ignored), so a stale build/ folder
cannot add modules that are no longer in the tree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LISTED = REPO / "scripts" / "wheel-files.txt"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


def wheel_files() -> list[str]:
    tree = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    with tempfile.TemporaryDirectory(prefix="s3feed-wheel-") as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        for name in filter(None, tree.split("\0")):
            if (REPO / name).is_file() and not (REPO / name).is_symlink():
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, src / name)
        subprocess.run(
            [*PIP, "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
            check=True,
        )
        (wheel,) = out.glob("s3feed-*.whl")
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

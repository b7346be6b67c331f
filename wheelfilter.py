"""Keeps the test fakes out of the wheel (setuptools `build_py`, named in pyproject.toml).

`auth/fakests.py` and `transfer/fakestore.py` live beside the code they stand
in for, and the tests import them as `s3feed.auth.fakests` and
`s3feed.transfer.fakestore` from the editable install (which maps whole
folders, so they stay importable there). A wheel, and so `pip install .`,
leaves them out: nothing in the daemon imports them.

Not installed itself: setuptools loads it from the repository root at build time.
"""

from __future__ import annotations

import os

from setuptools.command.build_py import build_py

# (package, module) pairs only tests use; `make lint` checks a built wheel.
TEST_ONLY_MODULES = frozenset(
    {
        ("s3feed.auth", "fakests"),
        ("s3feed.transfer", "fakestore"),
    }
)


class BuildPy(build_py):
    """build_py without the test-only modules."""

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if (m[0], m[1]) not in TEST_ONLY_MODULES]

    def run(self) -> None:
        # A build/ left by an older build may still hold copies: drop them.
        for package, module in TEST_ONLY_MODULES:
            stale = os.path.join(self.build_lib, *package.split("."), module + ".py")
            if os.path.exists(stale):
                os.remove(stale)
        super().run()

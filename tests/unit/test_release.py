"""What the release ships: the license, the version in one place, the files the
wheel installs under share/s3feed/ (the README's install steps use them), and
the units' Documentation= pointing there."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_spdx_and_the_file_is_apache_2() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_the_version_is_pyprojects_everywhere() -> None:
    from s3feed.daemon import __version__
    from s3feed.daemon.service import s3feed_version

    assert __version__ == s3feed_version() == version("s3feed") == PYPROJECT["project"]["version"]
    assert f"## {__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_every_shipped_file_exists_and_units_document_the_installed_copy() -> None:
    shipped = PYPROJECT["tool"]["setuptools"]["data-files"]
    installed = set()
    for target, sources in shipped.items():
        assert target.startswith("share/s3feed")
        for source in sources:
            assert (ROOT / source).is_file(), source
            installed.add(f"{target}/{Path(source).name}")
    for unit in ("s3feed.service", "s3feed.socket"):
        assert f"share/s3feed/systemd/{unit}" in installed
        docs = re.findall(r"^Documentation=(\S+)", (ROOT / "systemd" / unit).read_text(), re.M)
        for doc in docs:
            if doc.startswith("file:/opt/s3feed/"):
                assert doc.removeprefix("file:/opt/s3feed/") in installed, doc
        assert any(d.startswith("file:") for d in docs)
    assert {
        "share/s3feed/grafana/dashboards/s3feed-overview.json",
        "share/s3feed/grafana/alerts/s3feed.rules.yml",
        "share/s3feed/grafana/render_rules.py",
        "share/s3feed/systemd/sysusers.d/s3feed.conf",
    } <= installed

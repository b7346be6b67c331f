#!/usr/bin/env python3
"""`make deb`: the Debian package, s3feed in a self-contained virtualenv.

The layout is dh-virtualenv's (docs/design.md, Debian package): a virtualenv of
Debian's /usr/bin/python3 at /usr/lib/s3feed holding s3feed and its
dependencies, /usr/bin/s3feed a link to its command, the units, the sysusers
and tmpfiles snippets under /usr/lib, the configuration under /etc/s3feed, and
the maintainer scripts in packaging/deb/. The virtualenv is made in a staging
tree and every path into that tree is rewritten to /usr/lib/s3feed (scripts'
#! lines, pyvenv.cfg); a path that survives stops the build. dpkg-deb builds
the archive (owner root, files 0644/0755 whatever the builder's umask: the
encoders' uids run the command).

    scripts/build_deb.py [--wheel WHEEL] [--out DIR] [--revision N]...

Without --wheel, the wheel is built with `python -m build`. Each --revision
makes one package, `s3feed_VERSION-N_ARCH.deb`, from the same staging tree (a
test upgrades 1 to 2). Prints the packages' paths.
"""

from __future__ import annotations

import argparse
import datetime
import email.utils
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from importlib.metadata import PackageMetadata, PathDistribution
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging" / "deb"
PREFIX = "/usr/lib/s3feed"
SYSTEM_PYTHON = "/usr/bin/python3"
# The README's step 3 (Running under systemd), which a host of encoder uids needs:
# they reach the cache files of their jobs, and only the job agent's group
# creates jobs. The rest of the example is the defaults, with URLs on.
CONFIG_EDITS = {
    '# group = "s3feed-clients"': 'group = "s3feed-clients"',
    "# controller_groups = ": "controller_groups = ",
}


def run(*argv: str | Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], check=True, text=True, **kw)


def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def build_wheel(out: Path) -> Path:
    run(sys.executable, "-m", "build", "--wheel", "--outdir", out, REPO, stdout=subprocess.DEVNULL)
    (wheel,) = out.glob("s3feed-*.whl")
    return wheel


def make_venv(root: Path, wheel: Path) -> Path:
    venv = root / PREFIX.lstrip("/")
    venv.parent.mkdir(parents=True)
    # No pip in the package: nothing installs into it on the host.
    run(SYSTEM_PYTHON, "-m", "venv", "--without-pip", venv)
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        venv / "bin/python",
        "--disable-pip-version-check",
        "install",
        "--quiet",
        "--no-compile",  # the postinst compiles, at the files' final paths
        "--no-warn-script-location",
        wheel,
    )
    return venv


def relocate(venv: Path) -> None:
    """Rewrite the staging path to PREFIX; fail on any file that still names it."""
    staged = str(venv).encode()
    for name in ("activate", "activate.csh", "activate.fish", "Activate.ps1"):
        (venv / "bin" / name).unlink(missing_ok=True)  # nobody activates a service's venv
    cfg = venv / "pyvenv.cfg"
    cfg.write_text(
        "".join(
            line for line in cfg.read_text().splitlines(True) if not line.startswith("command =")
        )
    )
    for direct_url in venv.glob("lib/python3*/site-packages/s3feed-*.dist-info/direct_url.json"):
        direct_url.unlink()  # the wheel's path on the build machine
    for path in (venv / "bin").iterdir():
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if data.startswith(b"#!"):
                path.write_bytes(data.replace(staged, PREFIX.encode()))
    # Relative, as a link in /usr must be (Debian Policy 10.5): the same /usr/bin/python3.
    python3 = venv / "bin/python3"
    if python3.is_symlink() and os.readlink(python3) == SYSTEM_PYTHON:
        python3.unlink()
        python3.symlink_to(os.path.relpath(SYSTEM_PYTHON, PREFIX + "/bin"))
    left = [
        str(p.relative_to(venv))
        for p in venv.rglob("*")
        if p.is_file() and not p.is_symlink() and staged in p.read_bytes()
    ]
    if left:
        sys.exit(f"build_deb: the staging path is still in {', '.join(left)}")


def unit_text(path: Path) -> str:
    return path.read_text().replace("/opt/s3feed", PREFIX)


def install_files(root: Path, venv: Path) -> None:
    systemd = REPO / "systemd"
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for unit in ("s3feed.service", "s3feed.socket"):
        (units / unit).write_text(unit_text(systemd / unit))
        # The copies the wheel put under share/ (the units' Documentation= dir) agree.
        (venv / "share/s3feed/systemd" / unit).write_text(unit_text(systemd / unit))
    for kind in ("sysusers.d", "tmpfiles.d"):
        (root / "usr/lib" / kind).mkdir(parents=True)
        shutil.copy(systemd / kind / "s3feed.conf", root / "usr/lib" / kind / "s3feed.conf")
    config = (systemd / "s3feed.toml.example").read_text()
    for old, new in CONFIG_EDITS.items():
        if config.count(old) != 1:
            sys.exit(f"build_deb: {old!r} is not once in systemd/s3feed.toml.example")
        config = config.replace(old, new)
    (root / "etc/s3feed").mkdir(parents=True)
    (root / "etc/s3feed/s3feed.toml").write_text(config)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/s3feed").symlink_to("../lib/s3feed/bin/s3feed")
    overrides = root / "usr/share/lintian/overrides"
    overrides.mkdir(parents=True)
    shutil.copy(PACKAGING / "lintian-overrides", overrides / "s3feed")
    doc = root / "usr/share/doc/s3feed"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text((PACKAGING / "copyright").read_text() + bundled(venv))


def bundled(venv: Path) -> str:
    """One line per distribution in the virtualenv: name, version, license."""
    lines = []
    for info in sorted(venv.glob("lib/python3*/site-packages/*.dist-info")):
        meta = PathDistribution(info).metadata

        def field(name: str, meta: PackageMetadata = meta) -> list[str]:
            return meta.get_all(name) or []

        licence = "; ".join(field("License-Expression"))
        if not licence:
            classifiers = [c for c in field("Classifier") if c.startswith("License ::")]
            licence = "; ".join(c.rsplit(" :: ", 1)[-1] for c in classifiers)
        if not licence and field("License") and len(field("License")[0]) < 80:
            licence = field("License")[0]
        lines.append(f" {meta['Name']} {meta['Version']}: {licence or 'see its dist-info'}\n")
    return "".join(lines)


def strip(root: Path) -> None:
    """Strip the compiled modules as dh_strip would (the wheels ship them with symbols)."""
    objects = [p for p in root.rglob("*.so") if p.is_file() and not p.is_symlink()]
    run(
        "strip", "--remove-section=.comment", "--remove-section=.note", "--strip-unneeded", *objects
    )


def normalise_modes(root: Path) -> None:
    """0755 directories and executables, 0644 the rest: readable by every uid."""
    for dirpath, _dirs, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_symlink():
                continue
            executable = path.stat().st_mode & 0o100 and ".so" not in name
            path.chmod(0o755 if executable else 0o644)


def shlib_depends(root: Path) -> str:
    """The Debian packages the virtualenv's compiled modules link against."""
    objects = [str(p) for p in root.rglob("*.so") if not p.is_symlink()]
    objects += [str(p) for p in root.rglob("*.so.*") if not p.is_symlink()]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "debian").mkdir()
        (Path(tmp) / "debian/control").write_text(
            "Source: s3feed\n\nPackage: s3feed\nArchitecture: any\n"
        )
        # Libraries the wheels bundle (in *.libs/ directories) are found there.
        libdirs = sorted({str(Path(o).parent) for o in objects if ".libs" in o})
        out = run(
            "dpkg-shlibdeps",
            "-O",
            "--warnings=0",
            *(f"-l{d}" for d in libdirs),
            *(f"-e{o}" for o in objects),
            cwd=tmp,
            capture_output=True,
        ).stdout
    return out.strip().removeprefix("shlibs:Depends=")


def python_depends() -> str:
    """The virtualenv runs only on the Python minor version it was made with."""
    minor = run(
        SYSTEM_PYTHON,
        "-c",
        "import sys; print(*sys.version_info[:2], sep='.')",
        capture_output=True,
    ).stdout.strip()
    major, number = minor.split(".")
    return f"python3 (>= {minor}~), python3 (<< {major}.{int(number) + 1}~)"


def installed_size(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        if path.is_relative_to(root / "DEBIAN"):
            continue
        total += 1 if path.is_dir() or path.is_symlink() else (path.stat().st_size + 1023) // 1024
    return total


def maintainer() -> str:
    name, mail = os.environ.get("DEBFULLNAME"), os.environ.get("DEBEMAIL")
    for key, value in (("user.name", name), ("user.email", mail)):
        if value is None:
            found = subprocess.run(["git", "config", key], cwd=REPO, capture_output=True, text=True)
            if key == "user.name":
                name = found.stdout.strip() or "s3feed maintainers"
            else:
                mail = found.stdout.strip() or "s3feed@localhost"
    return f"{name} <{mail}>"


def changelog(version: str, who: str) -> bytes:
    when = email.utils.format_datetime(datetime.datetime.now(datetime.UTC).replace(microsecond=0))
    text = (
        f"s3feed ({version}) unstable; urgency=medium\n\n"
        f"  * Built from the s3feed repository; its CHANGELOG.md says what changed.\n\n"
        f" -- {who}  {when}\n"
    )
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def control_dir(root: Path, version: str, arch: str, depends: str, who: str) -> None:
    debian = root / "DEBIAN"
    debian.mkdir(exist_ok=True)
    for script in ("postinst", "prerm", "postrm"):
        shutil.copy(PACKAGING / script, debian / script)
        (debian / script).chmod(0o755)
    (debian / "conffiles").write_text("/etc/s3feed/s3feed.toml\n")
    fields = {
        "@VERSION@": version,
        "@ARCH@": arch,
        "@MAINTAINER@": who,
        "@INSTALLED_SIZE@": str(installed_size(root)),
        "@DEPENDS@": depends,
    }
    control = (PACKAGING / "control.in").read_text()
    for key, value in fields.items():
        control = control.replace(key, value)
    (debian / "control").write_text(control)
    (debian / "control").chmod(0o644)
    sums = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and not path.is_relative_to(debian):
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            sums.append(f"{digest}  {path.relative_to(root)}\n")
    (debian / "md5sums").write_text("".join(sums))
    (debian / "md5sums").chmod(0o644)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help="s3feed's wheel (default: build one)")
    parser.add_argument("--out", type=Path, default=REPO / "dist")
    parser.add_argument("--revision", type=int, action="append", help="Debian revision (1)")
    parser.add_argument(
        "--compression",
        choices=("xz", "gzip", "none"),
        default="xz",
        help="dpkg-deb -Z: xz (the default) is the smallest; gzip is faster to build",
    )
    args = parser.parse_args(argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    arch = run("dpkg", "--print-architecture", capture_output=True).stdout.strip()
    who = maintainer()
    with tempfile.TemporaryDirectory(prefix="s3feed-deb-") as tmp:
        wheel = args.wheel or build_wheel(Path(tmp) / "wheel")
        root = Path(tmp) / "root"
        venv = make_venv(root, wheel)
        relocate(venv)
        install_files(root, venv)
        strip(root)
        depends = ", ".join(
            filter(None, [python_depends(), shlib_depends(root), "systemd (>= 252)"])
        )
        for revision in args.revision or [1]:
            version = f"{project_version()}-{revision}"
            log = root / "usr/share/doc/s3feed/changelog.Debian.gz"
            log.write_bytes(changelog(version, who))
            normalise_modes(root)
            control_dir(root, version, arch, depends, who)
            deb = args.out / f"s3feed_{version}_{arch}.deb"
            run(
                "dpkg-deb",
                "--root-owner-group",
                f"-Z{args.compression}",
                "--build",
                root,
                deb,
                stdout=subprocess.DEVNULL,
            )
            print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

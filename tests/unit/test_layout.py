"""The code's layout holds (docs/design.md, Layout): layers import one way, and a
package's modules are private to it, reached from outside only through the
names its `__init__` exports.

Read from the source with `ast`, so nothing is imported and a lazy import inside
a function counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
import collections
import graphlib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDERS = {
    "auth": "s3feed.auth",
    "client": "s3feed.client",
    "transfer": "s3feed.transfer",
    "daemon": "s3feed.daemon",
}
# Which layer may import which (docs/design.md, Layout): one way, no cycle.
MAY_IMPORT = {
    "s3feed.auth": set(),
    "s3feed.client": set(),
    "s3feed.transfer": {"s3feed.auth"},
    "s3feed.daemon": {"s3feed.auth", "s3feed.transfer", "s3feed.client"},
}


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a module or package, resolved
    names: tuple[str, ...]
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


def product_modules() -> dict[str, Module]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join([package, *parts])
            found[name] = Module(name, path, is_package)
    return found


MODULES = product_modules()


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(module: Module) -> list[Import]:
    tree = ast.parse(module.path.read_text())
    type_only = _type_checking_lines(tree)
    here = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = tuple(alias.name for alias in node.names)
            if target.startswith("s3feed"):
                # `from s3feed.daemon import allocator` imports a module
                if all(f"{target}.{n}" in MODULES for n in names):
                    for n in names:
                        found.append(
                            Import(
                                module.name,
                                f"{target}.{n}",
                                (),
                                node.lineno,
                                node.lineno in type_only,
                            )
                        )
                else:
                    found.append(
                        Import(module.name, target, names, node.lineno, node.lineno in type_only)
                    )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("s3feed"):
                    found.append(
                        Import(module.name, alias.name, (), node.lineno, node.lineno in type_only)
                    )
    return found


IMPORTS = [imp for module in MODULES.values() for imp in imports_of(module)]


def package_of(name: str) -> str:
    return name if MODULES[name].is_package else name.rsplit(".", 1)[0]


def inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def exported(package: str) -> set[str]:
    tree = ast.parse(MODULES[package].path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    return set()


def layer_of(name: str) -> str:
    return ".".join(name.split(".")[:2])


def where(imp: Import) -> str:
    return f"{MODULES[imp.importer].path.relative_to(REPO)}:{imp.line}"


def test_the_walk_sees_every_layer_and_subpackage() -> None:
    packages = {m.name for m in MODULES.values() if m.is_package}
    assert {
        "s3feed.transfer.cache",
        "s3feed.transfer.s3",
        "s3feed.transfer.upload",
        "s3feed.daemon.api",
        "s3feed.daemon.cli",
        "s3feed.daemon.jobs",
        "s3feed.client",
    } <= packages
    assert len(IMPORTS) > 100  # the walk found the imports, not nothing


def test_every_import_resolves_to_a_module_of_the_product() -> None:
    unresolved = [f"{where(i)} {i.target}" for i in IMPORTS if i.target not in MODULES]
    assert unresolved == []


def test_layers_import_one_way() -> None:
    wrong = [
        f"{where(i)} imports {i.target}"
        for i in IMPORTS
        if i.target in MODULES
        and layer_of(i.target) != layer_of(i.importer)
        and layer_of(i.target) not in MAY_IMPORT[layer_of(i.importer)]
    ]
    assert wrong == []


def test_no_module_imports_another_packages_private_module() -> None:
    private = []
    for imp in IMPORTS:
        if imp.target not in MODULES:
            continue
        package = package_of(imp.target)
        if inside(imp.importer, package):
            continue  # a package's modules (and its subpackages') see each other
        if imp.target != package:
            private.append(f"{where(imp)} imports {imp.target}, private to {package}")
            continue
        missing = set(imp.names) - exported(package)
        if missing:
            private.append(f"{where(imp)} imports {sorted(missing)}, not in {package}.__all__")
    assert private == []


def test_every_face_exports_what_it_imports() -> None:
    for module in MODULES.values():
        if not module.is_package:
            continue
        names = exported(module.name)
        tree = ast.parse(module.path.read_text())
        bound = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        bound |= {
            node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)
        }
        assert names <= bound | {"AsyncClient"}, module.name  # AsyncClient: lazy (asyncio)


def _units(imp: Import) -> tuple[str, str, str] | None:
    """The two siblings an import connects, under their closest common package."""
    a, b = imp.importer.split("."), imp.target.split(".")
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    if common >= len(a) or common >= len(b):
        return None  # a face importing its own children, or a child its ancestor package
    parent = ".".join(a[:common])
    return parent, ".".join(a[: common + 1]), ".".join(b[: common + 1])


def test_no_import_cycle_between_sibling_modules_or_packages() -> None:
    graphs: dict[str, dict[str, set[str]]] = collections.defaultdict(
        lambda: collections.defaultdict(set)
    )
    for imp in IMPORTS:
        units = None if imp.type_only or imp.target not in MODULES else _units(imp)
        if units:
            parent, frm, to = units
            graphs[parent][frm].add(to)
    cycles = []
    for graph in graphs.values():
        try:
            graphlib.TopologicalSorter(graph).prepare()
        except graphlib.CycleError as e:
            cycles.append(" -> ".join(e.args[1]))
    assert cycles == []


def test_only_the_daemon_imports_prometheus_client() -> None:
    # auth/ and transfer/ report through their observer protocols
    users = sorted(
        m.name
        for m in MODULES.values()
        if "prometheus_client" in m.path.read_text() and layer_of(m.name) != "s3feed.daemon"
    )
    assert users == []


# aiohttp's internals the daemon once read: its request handler's counters and
# queue, a runner's site registry, a writer's byte count. The connection guard
# frames requests itself (docs/design.md, Limits), so none is read. Should a hook
# ever be missing, the one module allowed to read aiohttp's internals is
# daemon/api/aiohttp_compat.py, saying what it reads and why, with a test that
# fails when aiohttp changes; these tests then exempt it, and only it.
AIOHTTP_INTERNALS = [
    "_request_count",
    "_messages",
    "_request_in_progress",
    "_reg_site",
    "output_size",
]


@pytest.mark.parametrize("name", AIOHTTP_INTERNALS)
def test_no_module_names_an_aiohttp_internal(name: str) -> None:
    users = sorted(
        str(m.path.relative_to(REPO)) for m in MODULES.values() if name in m.path.read_text()
    )
    assert users == []


# aiohttp's modules whose names it documents or lists in `__all__`.
AIOHTTP_PUBLIC = {"aiohttp", "aiohttp.web", "aiohttp.http", "aiohttp.abc"}


def _aiohttp_imports(module: Module) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(module.path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
    return [(name, line) for name, line in found if name.split(".")[0] == "aiohttp"]


def test_the_product_imports_only_aiohttps_public_modules() -> None:
    private = [
        f"{m.path.relative_to(REPO)}:{line} imports {name}"
        for m in MODULES.values()
        for name, line in _aiohttp_imports(m)
        if name not in AIOHTTP_PUBLIC
    ]
    assert private == []


def test_transfer_never_imports_aiohttp() -> None:
    # The daemon hands it the request body as a BodySource that speaks
    # transfer/'s errors (daemon/api/outputs.py, RequestBody).
    users = [
        f"{m.path.relative_to(REPO)}:{line}"
        for m in MODULES.values()
        if layer_of(m.name) == "s3feed.transfer"
        for _, line in _aiohttp_imports(m)
    ]
    assert users == []

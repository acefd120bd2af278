"""The package layout: fusepy's `fuse` is never shadowed by our fuse/ folder,
and each role package imports only what its docstring allows."""

import ast
import importlib
import pathlib

import cistern.fuse

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_import_fuse_is_fusepy_and_cistern_fuse_is_ours():
    fusepy = importlib.import_module("fuse")
    assert hasattr(fusepy, "FUSE") and hasattr(fusepy, "Operations")
    assert pathlib.Path(fusepy.__file__).resolve().parent != REPO / "fuse"
    assert pathlib.Path(cistern.fuse.__file__).resolve() == REPO / "fuse" / "__init__.py"


def test_every_role_folder_is_a_documented_subpackage():
    for folder in ["core", "metadata", "blockstore", "client", "scheduler", "fuse", "bench", "cli"]:
        module = importlib.import_module(f"cistern.{folder}")
        assert module.__doc__ and "import" in module.__doc__, folder


# Which cistern packages each package may import (the design's one-way arrows).
ALLOWED = {
    "core": set(),
    "metadata": {"core"},
    "blockstore": {"core", "metadata"},
    "client": {"core", "metadata", "blockstore"},
    "scheduler": {"core", "metadata", "blockstore", "client"},
    "fuse": {"core", "client"},
    "bench": {"core", "metadata", "blockstore", "client"},
    "cli": {"core", "metadata", "blockstore", "client", "scheduler", "fuse", "bench"},
}
# Outside systems enter through one module each.
GATEKEEPERS = {"pysyncobj": {"metadata/replica.py"}, "fuse": {"fuse/operations.py", "fuse/mount.py",
                                                                 "fuse/passthrough.py"}}


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_dependencies_point_one_way_and_outside_systems_enter_once():
    for folder, allowed in ALLOWED.items():
        for path in (REPO / folder).rglob("*.py"):
            if "proto" in path.parts:
                continue
            rel = str(path.relative_to(REPO))
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] == "cistern" and len(parts) > 1:
                    assert parts[1] in allowed | {folder}, f"{rel} imports {name}"
                if parts[0] in GATEKEEPERS:
                    assert rel in GATEKEEPERS[parts[0]], f"{rel} imports {parts[0]}"

"""The packages import each other in one direction only (docs/conventions.md, "Layout")."""

import ast
import os

from tests.conftest import ROOT

# From the bottom up: a package may import only those before it.
ORDER = ("runkit", "guided_diffusion", "imaging", "testbed", "noisy_mnist", "sr_var", "studies")
# noisy_mnist (Theorem 2.1) needs no diffusion code, and the testbed none of it either.
FORBIDDEN = {"noisy_mnist": {"guided_diffusion", "imaging", "testbed"}, "testbed": {"guided_diffusion"},
             "imaging": {"guided_diffusion"}}


def imported_packages(package):
    """{imported project package: first file that imports it} over the package's modules."""
    found = {}
    folder = os.path.join(ROOT, package)
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(folder, name)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
            else:
                continue
            for target in targets:
                top = target.split(".")[0]
                if top in ORDER and top != package:
                    found.setdefault(top, f"{package}/{name}")
    return found


def test_packages_import_downwards_only():
    for i, package in enumerate(ORDER):
        for imported, where in imported_packages(package).items():
            assert imported in ORDER[:i], f"{where} imports {imported}, which sits above {package}"
            assert imported not in FORBIDDEN.get(package, ()), f"{where} imports {imported}"


def test_pyproject_lists_every_package():
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    for package in ORDER:
        assert f'"{package}"' in text


def test_every_model_kind_fills_in_its_parts():
    """A kind (sr_var.kinds) overrides every part the stages call; its rules name its own flags."""
    from sr_var.kinds import KINDS, ModelKind

    parts = ("loss", "train_tiles", "in_255", "output_paths", "write", "test_tiles")
    for name, kind in KINDS.items():
        assert kind.name == name and kind.args_pickle == f"{name}_model_args.pkl"
        missing = [p for p in parts if getattr(type(kind), p) is getattr(ModelKind, p)]
        assert not missing, f"kind {name} lacks {missing}"
        assert set(kind.rules) <= set(kind.defaults()), name

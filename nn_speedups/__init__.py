"""nn-speedups, one importable package: the public names for describing your own model (docs/own-model.md), and
the map of the repository's top-level folders into the package.

    from nn_speedups import ModelSpec, image_inputs, token_inputs, spec_from_example

The design card keeps `benches/`, `kernels/`, `models/` and `optimizations/` at the top of the repository; they are
the subpackages nn_speedups.benches, .kernels, .models and .optimizations. A wheel installs them inside the package
(pyproject.toml: package-dir); an editable install maps them with setuptools' finder; in a plain checkout
(PYTHONPATH=., as on the GPU image) the finder below does the same, so all three import the same names and nothing
generic (`models`, `kernels`, ...) is importable at top level. Nothing heavy is imported here: the pytest entry
point (nn_speedups.pytest_plugin) imports this package in every session of an environment that has the suite.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"  # the one version source (pyproject.toml reads it: [tool.setuptools.dynamic])

# the repository's top-level folders that are subpackages; kernels/ has no __init__.py on purpose: a top-level
# `kernels` package would shadow Hugging Face's `kernels` (transformers imports it) whenever the checkout is on sys.path
FOLDERS = ("benches", "kernels", "models", "optimizations")
_HERE = Path(__file__).resolve().parent


class _CheckoutFolders(importlib.abc.MetaPathFinder):
    """nn_speedups.<folder> -> <checkout>/<folder>, for a checkout whose folders are not inside the package."""

    def __init__(self, root: Path):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix != __name__ or name not in FOLDERS:
            return None
        folder = self.root / name
        init = folder / "__init__.py"
        if init.is_file():
            return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(folder)])
        spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)  # a namespace package (kernels/)
        spec.submodule_search_locations = [str(folder)]
        return spec


def _map_checkout() -> None:
    root = _HERE.parent
    if (_HERE / "models").is_dir() or not (root / "models" / "registry.py").is_file():
        return  # an installed wheel holds the folders inside the package
    if not any(isinstance(f, _CheckoutFolders) for f in sys.meta_path):
        sys.meta_path.append(_CheckoutFolders(root))


_map_checkout()

_PUBLIC = {
    "ModelSpec": "nn_speedups.models.registry",
    "image_inputs": "nn_speedups.models.registry",
    "spec_from_example": "nn_speedups.models.user",
    "UserModel": "nn_speedups.models.user",
    "token_inputs": "nn_speedups.models.hf_folder",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'nn_speedups' has no attribute {name!r}")

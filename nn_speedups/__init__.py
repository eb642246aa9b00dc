"""nn-speedups' public names for describing your own model (README: "Benchmark your own model").

    from nn_speedups import ModelSpec, image_inputs, token_inputs, spec_from_example

The suite's own packages (models, harness, optimizations, nn_speedups.kernels, benches) are imported only when one
of these names is first used, so that the pytest entry point (nn_speedups.pytest_plugin) stays cheap to load.
"""

from __future__ import annotations

__version__ = "0.1.0"

_PUBLIC = {
    "ModelSpec": "models.registry",
    "image_inputs": "models.registry",
    "spec_from_example": "models.user",
    "UserModel": "models.user",
    "token_inputs": "models.hf_folder",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'nn_speedups' has no attribute {name!r}")

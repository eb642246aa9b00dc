"""What runs: the model registry. Importing this package registers every model file in it."""

import importlib
import pkgutil

from nn_speedups.models.registry import REGISTRY, ModelSpec, build_model, count_parameters, get_spec, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("registry", "activations", "ghost_bn", "onnx_inputs", "user_inputs"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "ModelSpec", "build_model", "count_parameters", "get_spec", "register"]

"""Test-only import shim for running ComfyUI 0.3.75 next to the project's CPU torch.

ComfyUI imports ``torchvision`` at module level (``comfy/ldm/cascade/*``, ``comfy/ldm/cosmos/*``)
but SDXL never calls it. PyPI's torchvision wheels are CUDA builds that cannot load next to a
CPU-only torch, and the project never installs them. When no torchvision is importable, this
registers a stand-in module: ``import torchvision`` and ``from torchvision import transforms``
succeed, and *using* anything from it raises a RuntimeError that says why.

Put ``tools/comfy_shim`` on ``PYTHONPATH`` (the server tests do), or call :func:`install`.
Never shipped with the node pack: ComfyUI users have a real torchvision.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

_MESSAGE = ("torchvision is not installed in the act-steering test environment (stand-in from "
            "tools/comfy_shim); SDXL code paths do not need it")


class _Missing:
    def __init__(self, name):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name}: {_MESSAGE}")

    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        return _Missing(f"{self._name}.{item}")


class _StubModule(types.ModuleType):
    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        return _Missing(f"{self.__name__}.{item}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        mod = _StubModule(spec.name)
        mod.__path__ = []
        mod.__version__ = "0.0.0+act-stub"
        return mod

    def exec_module(self, module):
        parent, _, child = module.__name__.rpartition(".")
        if parent and parent in sys.modules:
            setattr(sys.modules[parent], child, module)


def install():
    """Register the stand-in unless a real torchvision is importable. Returns True if registered."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return True
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return False
    sys.meta_path.append(_Finder())
    return True


install()

"""ComfyUI entry point of the act-steering node pack (the repository root is the node folder).

ComfyUI imports this file as a package (``custom_nodes/<folder>/__init__.py``); the nodes live
in ./nodes and are loaded through the V3 ``comfy_entrypoint``. The library the nodes use,
``act_core``, ships in the same folder and is always the one the nodes run: the bundled copy
is registered under that name before anything else can import another (only ``act_core``; the
folder itself is never put on ``sys.path``, which would expose ``nodes`` and shadow ComfyUI's
``nodes.py``). If another ``act_core`` was imported first (e.g. a pip-installed act-steering
loaded by another pack) and its version differs from the bundled one, loading stops with an
ImportError that names both and the fix.

Outside ComfyUI (no ``comfy_api`` importable, e.g. pytest collecting the repository root as a
package) nothing here runs.
"""

import importlib.util as _ilu

if __package__ and _ilu.find_spec("comfy_api") is not None:
    import os as _os
    import sys as _sys

    _core = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "act_core")
    _other = _sys.modules.get("act_core")
    if _other is not None and _os.path.realpath(getattr(_other, "__file__", None) or "") != _os.path.realpath(
            _os.path.join(_core, "__init__.py")):
        with open(_os.path.join(_core, "_version.py"), encoding="utf-8") as _f:
            _bundled = _f.read().split("__version__ = ")[1].split()[0].strip("\"'")
        if getattr(_other, "__version__", None) != _bundled:
            raise ImportError(
                f"act-steering: another act_core {getattr(_other, '__version__', '?')} "
                f"({getattr(_other, '__file__', '?')}) was imported before this node pack, which needs its bundled "
                f"act_core {_bundled}. Uninstall the other one (pip uninstall act-steering) or install version "
                f"{_bundled}, then restart ComfyUI."
            )
    elif _other is None and _os.path.isfile(_os.path.join(_core, "__init__.py")):
        _spec = _ilu.spec_from_file_location("act_core", _os.path.join(_core, "__init__.py"),
                                             submodule_search_locations=[_core])
        _mod = _ilu.module_from_spec(_spec)
        _sys.modules["act_core"] = _mod
        try:
            _spec.loader.exec_module(_mod)
        except BaseException:
            del _sys.modules["act_core"]
            raise

    from .nodes import comfy_entrypoint  # noqa: F401

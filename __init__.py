"""ComfyUI entry point of the act-steering node pack (the repository root is the node folder).

ComfyUI imports this file as a package (``custom_nodes/<folder>/__init__.py``); the nodes live
in ./nodes and are loaded through the V3 ``comfy_entrypoint``. The library the nodes use,
``act_core``, ships in the same folder: when it has not been imported yet, the bundled copy
is registered under that name (only ``act_core``; the folder itself is never put on
``sys.path``, which would expose ``nodes`` and shadow ComfyUI's ``nodes.py``).

Outside ComfyUI (no ``comfy_api`` importable, e.g. pytest collecting the repository root as a
package) nothing here runs.
"""

import importlib.util as _ilu

if __package__ and _ilu.find_spec("comfy_api") is not None:
    import os as _os
    import sys as _sys

    _core = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "act_core")
    if "act_core" not in _sys.modules and _os.path.isfile(_os.path.join(_core, "__init__.py")):
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

"""The map file format: its constants, its errors and the rules a stored map obeys.

Both ends use these rules: :mod:`act_core.mapfile` checks a map before it writes it (a
:class:`MapWriteError` names what cannot be stored) and :mod:`act_core.mapfile_reader` checks
every file it reads (a :class:`MapFileError` names what is wrong), so what ``save`` writes,
``load`` accepts.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

FORMAT = "act-steering/transport-map"
FORMAT_VERSION = 1
MAX_METADATA_BYTES = 4 * 1024 * 1024
#: the estimators a stored map may come from (``mixed`` only at map level, for combined maps)
METHODS = ("linear", "mean", "gaussian", "aura")
#: tensors stored per module, ``"<module>/<key>"``
TENSOR_KEYS = ("omega", "beta", "bands", "flags")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class MapFileError(ValueError):
    """A map file is unreadable, malformed, or does not fit the model it is used with."""


class MapWriteError(OSError):
    """Saving a map failed (disk full, no permission, a map that cannot be stored, ...); any
    existing file is unchanged."""

    @classmethod
    def wrap(cls, path: Path, e: OSError) -> "MapWriteError":
        why = e.strerror or str(e)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = "free some disk space or save to another folder"
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = "choose a writable folder or fix its permissions"
        else:
            fix = "check the folder and try again"
        return cls(e.errno, f"could not write map {str(path)!r}: {why}; the existing file (if any) is unchanged and "
                            f"no partial file was left; {fix}")


def check_module_name(name: str) -> str:
    """``name`` if it is a dotted module path (letters, digits, ``_``, ``-``), else MapFileError."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise MapFileError(
            f"invalid module name {name!r}: module names are dotted paths of letters, digits, '_' and '-' "
            "(no '..', no '/', not absolute)"
        )
    return name

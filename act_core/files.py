"""Files written so that readers see the old file or the new one, never a part.

Every write goes to a hidden temporary file next to the target, named
``.<target name>.<pid>-<8 hex>.tmp``, which is flushed, fsynced and renamed over the target
(the folder is fsynced too where the system allows). A process killed while writing (power
loss, ``kill -9``) leaves that temporary file behind; every later write to the same target
first removes such leftovers of *this naming pattern only*, when they are regular files (never
links) and stale: older than :data:`STALE_AFTER_DEAD_OWNER` seconds and written by a process
that no longer runs on this machine, or older than :data:`STALE_AFTER` seconds whoever wrote
them (the owner cannot be checked: another machine on a shared folder, Windows, a recycled
pid). A temporary file of a save still in progress is never touched: its writer is alive and
its modification time moves while it writes.

:func:`write_new_file_in` writes a new file inside a folder without ever leaving it: on
systems with ``openat`` semantics every path step is opened relative to the folder with
``O_NOFOLLOW``, so a symbolic link planted inside the folder (as a subfolder or as the target
name) cannot redirect the write; elsewhere the resolved path is checked to stay inside.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import List, Optional, Sequence, Union

Data = Union[bytes, bytearray, memoryview, Sequence[Union[bytes, bytearray, memoryview]]]

#: a leftover temporary file whose writer is gone is removed after this many seconds
STALE_AFTER_DEAD_OWNER = 10 * 60
#: any leftover temporary file of our pattern is removed after this many seconds
STALE_AFTER = 24 * 60 * 60
_OURS = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
_OLD = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")  # mkstemp names of earlier versions (no pid)


def _chunks(data: Data) -> List:
    return [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)


def temp_name(target: str) -> str:
    """The hidden temporary name of a write to ``target`` by this process."""
    return f".{target}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def atomic_write_bytes(path: Path, data: Data) -> None:
    """Write ``data`` (bytes, or a sequence of byte buffers written one after the other) to
    ``path`` so that readers see the old file or the new one, never a part.

    The new file gets the old file's permissions, or the usual ``0o666 & ~umask`` for a new one.
    A symbolic link is followed: its target is replaced and the link kept. Stale temporary
    files of earlier, killed writes to the same target are removed first (module docstring).
    """
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    folder = path.parent
    clean_stale_temps(folder, path.name)
    tmp = folder / temp_name(path.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0),
                 0o600)
    try:
        _write_all(fd, data)
        os.chmod(tmp, _target_mode(path))
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_folder(folder)


def _write_all(fd: int, data: Data) -> None:
    """Write ``data`` to the open file descriptor ``fd``, flush and fsync it, and close it."""
    with os.fdopen(fd, "wb") as f:
        for chunk in _chunks(data):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def _unlink_quietly(p, dir_fd: Optional[int] = None) -> None:
    try:
        os.unlink(p, dir_fd=dir_fd) if dir_fd is not None else os.unlink(p)
    except OSError:
        pass


def _fsync_folder(folder, dir_fd: Optional[int] = None) -> None:
    """Make the rename durable (POSIX; a no-op where folders cannot be opened)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if dir_fd is None else os.dup(dir_fd)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _target_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _owner_alive(pid: int) -> Optional[bool]:
    """True / False when it can be told whether process ``pid`` runs here, else None."""
    if os.name != "posix":
        return None  # os.kill on Windows would terminate the process
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    return True


def is_stale_temp(name: str, mtime: float, target: Optional[str] = None, now: Optional[float] = None) -> bool:
    """True when ``name`` is one of our temporary files (for ``target``, or any target) that
    may be removed (see the module docstring)."""
    m = _OURS.match(name) or _OLD.match(name)
    if m is None or (target is not None and m.group("target") != target):
        return False
    age = (time.time() if now is None else now) - mtime
    if age > STALE_AFTER:
        return True
    pid = m.groupdict().get("pid")
    return age > STALE_AFTER_DEAD_OWNER and pid is not None and _owner_alive(int(pid)) is False


def clean_stale_temps(folder, target: Optional[str] = None, dir_fd: Optional[int] = None) -> List[str]:
    """Remove stale temporary files of our naming pattern in ``folder`` (for ``target`` only,
    or for every target); returns the names removed. Links and non-regular files are never
    touched; errors (a file removed meanwhile, no permission) are ignored."""
    removed = []
    try:
        entries = list(os.scandir(dir_fd if dir_fd is not None else folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(".") or not entry.name.endswith(".tmp"):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or not is_stale_temp(entry.name, st.st_mtime, target):
            continue
        try:
            if dir_fd is not None:
                os.unlink(entry.name, dir_fd=dir_fd)
            else:
                os.unlink(os.path.join(folder, entry.name))
            removed.append(entry.name)
        except OSError:
            pass
    return removed


# -- writing inside a folder, whatever links it holds ------------------------------------------------

_DIR_FD = (os.open in os.supports_dir_fd and os.mkdir in os.supports_dir_fd and os.link in os.supports_dir_fd
           and os.unlink in os.supports_dir_fd and os.scandir in os.supports_fd and hasattr(os, "O_NOFOLLOW")
           and hasattr(os, "O_DIRECTORY"))


class Taken(FileExistsError):
    """The name chosen for a new file exists already (another writer took it): choose another."""


def write_new_file_in(folder, parts: Sequence[str], choose_name, data: Data, attempts: int = 1000) -> str:
    """Write a new file inside ``folder``/``parts[:-1]`` (subfolders are created) atomically and
    without overwriting anything; returns its path.

    ``parts`` are the path components below ``folder`` (the caller has checked them: plain
    names, no ``..``); the last one only names the temporary file: ``choose_name(existing_names) -> name`` picks
    the file name from the names present in the final folder, and is asked again when another
    writer takes that name first. Nothing outside ``folder`` is ever created or written: a
    symbolic link inside it, as a subfolder or in place of the chosen name, is refused or not
    followed. ``folder`` itself may be a link (an administrator's choice of where maps live).
    """
    write = _write_new_at if _DIR_FD else _write_new_by_path
    return write(folder, parts[:-1], parts[-1], choose_name, data, attempts)


def _open_subfolder(dfd: int, name: str) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(name, flags, dir_fd=dfd)
    except FileNotFoundError:
        try:
            os.mkdir(name, 0o777, dir_fd=dfd)
        except FileExistsError:
            pass
        return os.open(name, flags, dir_fd=dfd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotADirectoryError(e.errno, f"{name!r} inside the maps folder is a link or a file, not a folder; "
                                              "remove it or choose another subfolder") from None
        raise


def _write_new_at(folder, subfolders: Sequence[str], label: str, choose_name, data: Data, attempts: int) -> str:
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for name in subfolders:
            nxt = _open_subfolder(dfd, name)
            os.close(dfd)
            dfd = nxt
        where = os.path.join(folder, *subfolders)
        clean_stale_temps(where, dir_fd=dfd)
        tmp = temp_name(label)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666,
                     dir_fd=dfd)
        try:
            _write_all(fd, data)
            for _ in range(attempts):
                name = choose_name([e.name for e in os.scandir(dfd)])
                try:  # link() never follows or replaces an existing name, link or not
                    os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
                except FileExistsError:
                    continue
                except OSError as e:
                    if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
                        raise
                    # no hard links on this file system: check, then rename (rename replaces a planted
                    # link itself, never what it points to)
                    try:
                        os.stat(name, dir_fd=dfd, follow_symlinks=False)
                        continue
                    except FileNotFoundError:
                        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                        break
                os.unlink(tmp, dir_fd=dfd)
                break
            else:
                raise Taken(errno.EEXIST, f"no free file name after {attempts} attempts in {where!r}")
        except BaseException:
            _unlink_quietly(tmp, dir_fd=dfd)
            raise
        _fsync_folder(None, dir_fd=dfd)
        return os.path.join(where, name)
    finally:
        os.close(dfd)


def _write_new_by_path(folder, subfolders: Sequence[str], label: str, choose_name, data: Data, attempts: int) -> str:
    root = os.path.realpath(folder)
    where = root
    for name in subfolders:
        where = os.path.join(where, name)
        if os.path.islink(where) or (os.path.exists(where) and not os.path.isdir(where)):
            raise NotADirectoryError(errno.ENOTDIR, f"{name!r} inside the maps folder is a link or a file, not a "
                                                    "folder; remove it or choose another subfolder")
        os.makedirs(where, exist_ok=True)
    if os.path.commonpath([root, os.path.realpath(where)]) != root:
        raise PermissionError(errno.EACCES, f"{where!r} resolves outside {root!r}; refusing to write there")
    clean_stale_temps(where)
    tmp = os.path.join(where, temp_name(label))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        _write_all(fd, data)
        for _ in range(attempts):
            name = choose_name(os.listdir(where))
            target = os.path.join(where, name)
            if os.path.lexists(target):
                continue
            try:
                os.link(tmp, target)  # fails if the name exists (also as a link)
                os.unlink(tmp)
            except FileExistsError:
                continue
            except OSError:
                if os.path.lexists(target):
                    continue
                os.rename(tmp, target)  # Windows: fails if the target exists
            break
        else:
            raise Taken(errno.EEXIST, f"no free file name after {attempts} attempts in {where!r}")
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return target


__all__ = ["atomic_write_bytes", "clean_stale_temps", "is_stale_temp", "temp_name", "write_new_file_in", "Taken",
           "STALE_AFTER", "STALE_AFTER_DEAD_OWNER"]

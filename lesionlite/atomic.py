"""Write files so that a crash or a refused result never leaves a half-written artifact.

Everything is written to a temporary name in the destination directory and renamed into place
(``os.replace`` is atomic on POSIX within one filesystem), so an existing good file is only
replaced by a complete new one.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it to ``dest``, else delete it.

    Works for files and for directory artifacts (e.g. a CoreML ``.mlpackage``).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=dest.parent))
        shutil.rmtree(tmp)
    else:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir:
            if dest.exists():
                old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(dest, old)
                os.replace(tmp, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, dest)
        else:
            os.replace(tmp, dest)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def write_bytes_atomic(dest: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_text_atomic(dest: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def write_json_atomic(dest: str | os.PathLike[str], obj: Any) -> Path:
    return write_text_atomic(dest, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def replace_dir(staged: str | os.PathLike[str], final: str | os.PathLike[str]) -> Path:
    """Rename a finished staging directory to ``final``, replacing an existing one in two renames.

    The old directory is first renamed aside (``.<name>.old-<pid>``) and deleted only after the new
    one is in place, so a reader sees the old or the new directory, never a half-written one.
    """

    staged, final = Path(staged), Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


#: names of work in progress that a killed writer leaves in an output folder, with the writer's PID:
#: ``.NAME.PID.XXXX.staging`` (export), ``.NAME.staging-PID`` (Triton repository), ``.NAME.old-PID``
#: (replace_dir), ``.NAME.PID.XXXX.tmp`` (atomic_path). Older exports wrote ``.NAME.XXXX.staging``, no PID.
_LEFTOVER = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid1>\d+)\.[^.]+\.(?:staging|tmp)|staging-(?P<pid2>\d+)"
                       r"|old-(?P<pid3>\d+)|[^.]+\.staging)$")


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this machine (signal 0 probes without sending)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_leftovers(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the staging folders, replaced-artifact folders and temporaries directly in ``folder``
    whose writer is gone (its PID is not running, or the name predates PIDs). A live writer's work
    is left alone, so two exports into one folder do not delete each other's staging.

    A replaced artifact set aside (``.NAME.old-PID``) whose successor never arrived (the writer died
    between the two renames of :func:`replace_dir`) is renamed back to ``NAME`` instead of deleted.

    Returns what was removed or restored. Called by ``export`` before it writes, so a killed export's
    leftovers are cleaned by the next one.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _LEFTOVER.match(p.name)
        if not m:
            continue
        pid = next((int(v) for v in (m.group("pid1"), m.group("pid2"), m.group("pid3")) if v), None)
        if pid is not None and (pid == os.getpid() or pid_alive(pid)):
            continue
        if m.group("pid3") and not (folder / m.group("name")).exists():
            # killed between replace_dir's two renames: the old artifact was moved aside and the new one
            # never arrived; put the old one back rather than lose it
            with contextlib.suppress(OSError):
                os.replace(p, folder / m.group("name"))
                removed.append(p)
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        if not p.exists():
            removed.append(p)
    return sorted(removed)

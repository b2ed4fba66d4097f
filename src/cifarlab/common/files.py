"""Files written whole or not at all, read back with one-line errors.

Every file but an appended log is written atomically: a temporary file next to the target
(`.NAME.RANDOM.tmp`, created with the user's umask), fsync, rename. A process killed at any moment
leaves the old file or the new one, never half of one; what it leaves is a hidden temporary,
which the next write into the same folder removes. The writer holds an flock on its temporary
while it writes, so that cleanup takes only what a dead process left (the kernel drops the lock
of a process however it dies). Every OSError of a write (no permission, a read-only or full disk,
a path under /proc) is a one-line RunError naming the file and the reason; no temporary stays.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import secrets
import shutil
import stat
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cifarlab.errors import CifarlabError
from cifarlab.text import first_problem

TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # .NAME.RANDOM.tmp: ours, and only ours
FRESH_SECONDS = 1.0  # a temporary this young may be one a live writer has created but not yet locked


class FileError(CifarlabError, ValueError):
    """A file that cannot be read, parsed or written; the message names it and says why."""


class RunError(FileError):
    """A path that is not a run or a checkpoint that cannot be used; the message is one line."""


# ---------------------------------------------------------------- locks


def try_lock(fd: int, shared: bool = False) -> bool:
    """flock `fd` without waiting: True when taken, False when another process holds it. Other
    OSErrors (a filesystem without locks) propagate."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


# ---------------------------------------------------------------- writing


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn any OSError inside into a one-line RunError naming `path` and the reason."""
    try:
        yield
    except OSError as e:
        raise RunError(f"{path}: cannot write it ({e.strerror or first_problem(e)})") from None


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    with writing(path):
        remove_stale_temporaries(path.parent)
        fd, tmp = _create_temporary(path)
        try:
            with os.fdopen(fd, "wb") as f:
                try_lock(f.fileno())  # a cleanup elsewhere then leaves this temporary alone
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                os.replace(tmp, path)  # while still locked: the name is gone before the lock is
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new file .NAME.RANDOM.tmp next to `path`, created as open() creates files: mode 0666 less
    the umask (mkstemp's 0600 would keep teammates from reading a shared run's reports)."""
    for _ in range(100):
        tmp = temporary_name(path)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary file name for {path.name}")


def temporary_name(path: Path) -> Path:
    """A hidden name next to `path` that remove_stale_temporaries recognises as a temporary."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def temporary_for(target: Path, folder: bool = False) -> Iterator[Path]:
    """A hidden temporary file (or folder) next to `target`, for a writer that writes by path (the
    ONNX exporter, a folder of files), locked while in use and removed at the end unless the caller
    renamed it into place. A killed process's is cleaned up as an atomic write's is."""
    target = Path(target)
    tmp = temporary_name(target)
    with writing(target):
        remove_stale_temporaries(target.parent)
        tmp.mkdir() if folder else os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        fd = os.open(tmp, os.O_RDONLY)
    try:
        try_lock(fd)  # a writer that writes by path truncates this same file: the lock stays on it
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True) if folder else tmp.unlink(missing_ok=True)
        os.close(fd)


def remove_stale_temporaries(folder: Path) -> list[str]:
    """Delete the temporaries (files or folders named .NAME.RANDOM.tmp) that writers killed
    mid-write left in `folder`; a live writer's are locked and stay. Returns the names removed."""
    try:
        names = [n for n in os.listdir(folder) if TEMPORARY.match(n)]
    except OSError:
        return []  # no folder yet, or one we cannot list: the write itself reports it
    removed = []
    for name in names:
        with contextlib.suppress(OSError):
            if _remove_if_abandoned(Path(folder) / name):
                removed.append(name)
    return sorted(removed)


def _remove_if_abandoned(path: Path) -> bool:
    info = path.lstat()
    if time.time() - info.st_mtime < FRESH_SECONDS or not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        return False  # young (a writer may not have locked it yet), or a link, FIFO or device: never ours
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not try_lock(fd):
            return False  # a live writer's
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        return True
    finally:
        os.close(fd)


def dumps_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_bytes(path, dumps_json(obj))


def atomic_torch_save(path: Path | str, obj: Any) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def append_jsonl(path: Path | str, record: dict) -> None:
    path = Path(path)
    with writing(path), open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------- reading


def read_text(path: Path | str, kind: str = "JSON") -> str:
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise RunError(f"{path}: not found") from None
    except UnicodeDecodeError as e:
        raise RunError(f"{path}: not valid {kind} (not UTF-8 text: byte {e.start})") from None
    except IsADirectoryError:
        raise RunError(f"{path}: is a folder; name a {kind} file") from None
    except OSError as e:  # no permission, a FIFO's error
        raise RunError(f"{path}: cannot be read ({e.strerror})") from None


def parse_json(text: str, where: str) -> Any:
    """Any JSON value; RunError naming `where` for text that is not JSON or nests too deeply."""
    return _parse(json.loads, json.JSONDecodeError, text, where, "JSON", RunError)


def read_json(path: Path | str) -> dict:
    """A file's JSON object; RunError naming the file for anything else: missing, unreadable,
    not UTF-8, not JSON, nested too deeply, or JSON of another shape (`[1]`, `null`)."""
    value = parse_json(read_text(path), str(path))
    if not isinstance(value, dict):
        raise RunError(f"{path}: should hold a JSON object, found {json_kind(value)}")
    return value


def read_toml(path: Path | str, error: type[CifarlabError] = FileError) -> dict:
    """A TOML file's table; `error` naming the file: missing, a folder, unreadable, not TOML, too deep."""
    path = Path(path)
    try:
        text = read_text(path, "TOML")
    except RunError as e:
        raise error(str(e)) from None
    return _parse(tomllib.loads, tomllib.TOMLDecodeError, text, str(path), "TOML", error)


def _parse(loads: Callable[[str], Any], invalid: type[Exception], text: str, where: str, kind: str, error: type[CifarlabError]) -> Any:
    """`loads(text)`, its refusal (`invalid`) or too deep a nesting as `error` naming `where`."""
    try:
        return loads(text)
    except invalid as e:
        raise error(f"{where}: not valid {kind} ({e})") from None
    except RecursionError:
        raise error(f"{where}: not valid {kind} (nested too deeply)") from None


def json_kind(value: Any) -> str:
    """What a JSON value is, in a user's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    kinds = {dict: "an object", list: "a list", tuple: "a list", str: "text", int: "a number", float: "a number"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), type(value).__name__)


def is_number(value: Any) -> bool:
    """An int or float, not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)

"""Atomic file writing and safetensors helpers shared by every artefact the toolkit writes."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import first_line


def safe_name(name: str) -> str:
    """``name`` with every character but letters, digits, ``-``, ``_`` and ``.`` replaced by ``_`` (for file names)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def check_parent(path: str | os.PathLike) -> Path:
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output directory {str(parent)!r} does not exist; create it first (mkdir -p {parent})")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data (or a directory's entries) to disk; directories are skipped where they cannot be opened."""
    is_dir = os.path.isdir(path)
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if is_dir else 0))
    except OSError:
        if is_dir:
            return  # Windows cannot open a directory; nothing to flush there
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` (the new content of a folder swap) to disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block finishes.

    The new file is flushed to disk before the rename and the rename itself after it (the parent directory is
    fsynced), so after a crash ``path`` holds either the old content or the whole new one.
    """
    path = check_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual mode
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _unique_sibling(path: Path, tag: str) -> Path:
    """A name beside ``path`` that does not exist yet: ``.NAME.TAG-<pid>-<random>``."""
    while True:
        candidate = path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        if not os.path.lexists(candidate):
            return candidate


def _renameat2_exchange():
    """Linux's renameat2(RENAME_EXCHANGE), which swaps two paths in one atomic step; None where unavailable."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2_exchange()


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> None:
    """Swap two existing paths atomically (Linux renameat2 RENAME_EXCHANGE); OSError(ENOTSUP) where impossible."""
    if _RENAMEAT2 is None:
        raise OSError(errno.ENOTSUP, "atomic exchange is not available on this platform")
    at_fdcwd, rename_exchange = -100, 2
    if _RENAMEAT2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a), None, str(b))


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def replace_dir(new: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put the directory ``new`` at ``path``, crash-safely: whatever was at ``path`` is removed only once ``new`` is
    in place, and at no moment is ``path`` missing (one atomic exchange where the platform has it; otherwise the old
    content is renamed aside to a unique name and renamed back if the second rename fails)."""
    new, path = Path(new), Path(path)
    if not os.path.lexists(path):
        os.replace(new, path)
        fsync_path(path.parent)
        return
    try:
        exchange(new, path)  # ``new`` now names the old content
        old = new
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        old = _unique_sibling(path, "old")
        os.replace(path, old)
        try:
            os.replace(new, path)
        except BaseException:
            os.replace(old, path)  # put the old content back: the target is never left missing
            raise
    fsync_path(path.parent)
    _remove(old)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary directory beside ``path``; it replaces ``path`` only if the block finishes.

    The new content is flushed to disk and swapped in with ``replace_dir``: the old content is removed only after
    the new one is in place, so a crash at any point leaves ``path`` whole (old or new).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        _fsync_tree(tmp)
        replace_dir(tmp, path)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


def save_safetensors(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def write_json(obj, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_safetensors(path, fix: str | None = "re-create or re-download it") -> tuple[dict[str, torch.Tensor],
                                                                                     dict[str, str]]:
    """Read every tensor and the metadata; a missing or corrupt file raises with a one-line reason (and ``fix``)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a directory, not a safetensors file; pass the file inside it")
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist" + ("; check the path" if fix else ""))
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file ({first_line(e)})"
                         + (f"; {fix}" if fix else "")) from None
    return tensors, metadata


def tensor_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A hash of named tensors that does not depend on file layout (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()

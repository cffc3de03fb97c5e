"""Output folders that never lose what the user did not ask to replace (docs/safety.md).

- ``check_not_input``: an output that is one of the command's inputs, or a folder holding one, is refused.
- ``OutputLock``: an advisory lock (``fcntl.flock``) on ``.NAME.lock`` beside the output, holding the pid, so a second
  run into the same output is refused at once, naming the holder. Released (and removed) on exit; the kernel drops it
  if the process dies.
- ``refuse_existing``: a non-empty output folder is refused unless ``--overwrite`` (or ``--resume``).
- ``claim_output``: the three together, for commands that write their output in one swap at the end (backbone
  trainers, ``write_imagefolder``): ``atomic_dir`` then replaces the old content only once the new one is complete.
- ``RunOutput``: the folder of a distillation run. With ``--overwrite`` the run is staged in ``.NAME.overwrite`` beside
  it and swapped in when it finishes (or when it is interrupted with a checkpoint to resume from): until then the old
  content stays whole in place.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (documented)
    fcntl = None

from .io import _fsync_tree, _remove, replace_dir


def lock_path(path: str | os.PathLike) -> Path:
    path = Path(os.path.abspath(path))  # "." and "x/.." have a name once absolute
    return path.with_name(f".{path.name}.lock")


def staging_path(path: str | os.PathLike) -> Path:
    path = Path(os.path.abspath(path))
    return path.with_name(f".{path.name}.overwrite")


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file or folder (hard links and symlinks included)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return Path(a).resolve() == Path(b).resolve()


def check_not_input(output: str | os.PathLike, inputs: Iterable[tuple[str, object]], flag: str = "--output") -> None:
    """Refuse ``output`` when it is one of ``inputs`` (``(flag, path)`` pairs; ``None`` and names that are not local
    paths are skipped) or a folder that holds one: writing it would replace or delete the input."""
    out = Path(output)
    for name, value in inputs:
        if value is None or not isinstance(value, (str, os.PathLike)) or not os.path.exists(value):
            continue
        if same_path(out, value):
            raise ValueError(f"{flag} {str(output)!r} is the input {name} {str(value)!r}; writing it would "
                             f"replace the input: choose another {flag}")
        if out.resolve() in Path(value).resolve().parents:
            raise ValueError(f"{flag} {str(output)!r} holds the input {name} {str(value)!r}; replacing it would "
                             f"delete the input: choose another {flag}")


def is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def refuse_existing(path: str | os.PathLike, overwrite: bool = False, resume: bool = False,
                    flag: str = "--output") -> None:
    """A file at ``path``, or a non-empty folder, is refused unless ``overwrite`` (or ``resume``)."""
    path = Path(path)
    if overwrite or resume:
        return
    if os.path.lexists(path) and not path.is_dir():
        raise FileExistsError(f"{flag} {str(path)!r} is a file, not a folder; choose another {flag} (or pass "
                              "--overwrite to replace it)")
    if is_nonempty_dir(path):
        checkpoints = sorted((path / "checkpoints").glob("step_*"))
        if checkpoints and (path / "set.safetensors").is_file():  # a finished run keeps its last checkpoint
            raise FileExistsError(f"{flag} {str(path)!r} holds a finished run (set.safetensors, checkpoint "
                                  f"{checkpoints[-1].name}); use --resume --steps N to extend it, --overwrite to "
                                  f"replace it, or choose another {flag}")
        if checkpoints:
            raise FileExistsError(f"{flag} {str(path)!r} holds an interrupted run (checkpoint {checkpoints[-1].name}); "
                                  "use --resume to continue it or --overwrite to discard it")
        raise FileExistsError(f"{flag} {str(path)!r} is not empty; choose another {flag} or pass --overwrite to "
                              "replace its content (once the new content is complete)")


class OutputLock:
    """An exclusive advisory lock on ``.NAME.lock`` beside ``path``; ``acquire`` refuses at once if another process
    holds it. The lock file holds the holder's pid and is removed on release."""

    def __init__(self, path: str | os.PathLike, flag: str = "--output"):
        self.path, self.file, self.flag = Path(path), lock_path(path), flag
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        if fcntl is None or self._fd is not None:
            return self
        self.file.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise BlockingIOError(f"{self.flag} {str(self.path)!r} is in use by another run (pid {holder}, lock "
                                      f"{self.file}); wait for it to finish or choose another {self.flag}") from None
            # the holder may have released and removed the file between our open and our lock: retry on the new one
            try:
                current = os.stat(self.file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.file.unlink()  # while still locked: a waiter that opened this file notices it is gone and retries
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class claim_output:
    """Claim an output written in one swap at the end (``atomic_dir``): refuse an input, take the lock, refuse a
    non-empty output unless ``overwrite`` or ``resume``. A context manager; the lock is released on exit."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False, resume: bool = False,
                 inputs: Iterable[tuple[str, object]] = (), flag: str = "--output"):
        self.path, self.overwrite, self.resume, self.inputs, self.flag = (
            Path(path),
            overwrite,
            resume,
            list(inputs),
            flag,
        )
        self.lock = OutputLock(self.path, flag)

    def __enter__(self) -> Path:
        check_not_input(self.path, self.inputs, self.flag)
        self.lock.acquire()
        try:
            refuse_existing(self.path, self.overwrite, self.resume, self.flag)
        except BaseException:
            self.lock.release()
            raise
        return self.path

    def __exit__(self, *exc) -> None:
        self.lock.release()


def claim_backbone_output(args) -> claim_output:
    """``claim_output`` for a backbone trainer's parsed flags (``--output``, ``--overwrite``, ``--resume`` and the
    folders it reads: ``--data-dir``, ``--cache-dir``, a diffusion trainer's ``--vae``)."""
    inputs = [(f"--{name.replace('_', '-')}", getattr(args, name, None)) for name in ("data_dir", "cache_dir", "vae")]
    return claim_output(args.output, overwrite=args.overwrite, resume=args.resume, inputs=inputs)


class RunOutput:
    """The ``--output`` folder of a distillation run, claimed for the run's duration.

    ``workdir`` is where the run writes: the folder itself, or with ``overwrite`` the staging folder beside it that
    ``commit`` swaps in once the run is complete. Only the main process (``main``) touches the file system; every
    process must enter the context (the others wait for the main one's verdict through ``agree``).
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False, resume: bool = False,
                 inputs: Iterable[tuple[str, object]] = (), main: bool = True, agree=None):
        if overwrite and resume:
            raise ValueError("--resume continues the run in --output and --overwrite discards it; pass "
                             "only one of them")
        self.path, self.overwrite, self.resume, self.main = Path(path), overwrite, resume, main
        self.inputs = list(inputs)
        self.staging = staging_path(self.path)
        self.workdir = self.staging if overwrite else self.path
        self.lock = OutputLock(self.path)
        self.committed = False
        self._agree = agree or (lambda ok: ok)

    def __enter__(self) -> RunOutput:
        error = None
        if self.main:
            try:
                check_not_input(self.path, self.inputs)
                self.lock.acquire()
                refuse_existing(self.path, self.overwrite, self.resume)
                if self.overwrite:
                    _remove(self.staging)  # a leftover of an earlier --overwrite run that failed: never user content
                    self.staging.mkdir(parents=True)
                else:
                    self.path.mkdir(parents=True, exist_ok=True)
            except BaseException as e:
                self.lock.release()
                error = e
        if not self._agree(error is None):
            if error is not None:
                raise error
            raise ValueError(f"the main process refused --output {str(self.path)!r} (see its message)")
        return self

    def commit(self) -> None:
        """With ``overwrite``: put the staged run in place of the old content, which is removed only now."""
        if self.main and self.overwrite and not self.committed and self.staging.is_dir():
            _fsync_tree(self.staging)
            replace_dir(self.staging, self.path)
        self.committed = True

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            # interrupted (Ctrl-C, SIGTERM) with a checkpoint of the new run: the user asked to discard the old content,
            # and the new run can now be resumed from --output; any other failure leaves the old content in place
            if (
                exc_type is not None
                and issubclass(exc_type, KeyboardInterrupt)
                and any((self.staging / "checkpoints").glob("step_*"))
            ):
                self.commit()
        finally:
            if self.main:
                self.lock.release()

"""Writing files safely: atomic writes, all-or-none groups of files, folder checks and folder locks."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from lib.common import UserError

_staged: set[Path] = set()  # temporary files that atomic_write blocks still open will rename into place


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    Readers never see a half-written file: a crash, a full disk or a second Ctrl-C leaves the old file intact. A write
    the system refuses (a full disk or quota, a folder removed meanwhile) is a UserError naming the file, exit code 1.
    Given a path an open block yielded (save_checkpoint into a file of all_or_none), it yields that path itself.
    """
    path = Path(path)
    if path in _staged:
        yield path
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Keep the real suffix last so tools that infer the format from the name (matplotlib) still work.
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
        umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # as open() would have made it: mkstemp's files are private (0600)
    except OSError as error:
        raise write_failed(path, error) from None
    tmp = Path(tmp_name)
    _staged.add(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_failed(path, error) from None
        raise
    finally:
        _staged.discard(tmp)


@contextlib.contextmanager
def all_or_none() -> Iterator[Callable[[str | Path], Path]]:
    """Write several files as one: each is renamed into place only once the whole block has succeeded.

    `stage(path)` gives the temporary path to write `path` to. A write that fails, or an interruption, leaves every
    file as it was. Write each file right after staging it, so that a failure is reported under that file's name.
    """
    with contextlib.ExitStack() as stack:
        yield lambda path: stack.enter_context(atomic_write(path))


def write_failed(path: Path, error: OSError) -> UserError:
    kept = f" (the earlier {path.name} is kept whole)" if path.exists() else ""
    return UserError(f"could not write {path}: {error.strerror or error}{kept}", exit_code=1)


def write_json(path: str | Path, data: dict) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def check_writable_dir(folder: str | Path, what: str, must_exist: bool = False) -> None:
    """Fail before any work is done if outputs could not be written into `folder` at the end.

    That is: it, or while it is still to be created the nearest folder above it that exists, is a file or not
    writable; with must_exist, it is missing.
    """
    given = Path(folder)
    if must_exist and not given.exists():
        raise UserError(f"{what}: folder {given} does not exist")
    existing = next(p for p in (given.absolute(), *given.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{what}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what}: cannot write in {existing} (no permission, or a read-only file system)")


_claimed: dict[Path, int] = {}  # folder -> the open descriptor whose lock this process holds until it ends


def claim_folder(folder: str | Path, refusal: str) -> None:
    """Raise UserError with `refusal` while another process has claimed `folder`, creating the folder if need be.

    Two runs saving into one folder would mix their files. The claim is an advisory lock on the folder itself
    (flock), so nothing is left behind, and the system drops it whenever the process ends, SIGKILL included. Where
    there are no such locks (Windows, some network file systems) nothing is checked. A process may claim a folder it
    holds again.
    """
    try:
        import fcntl
    except ImportError:
        return
    folder = Path(folder).resolve()
    if folder in _claimed:
        return
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(descriptor)
        if isinstance(error, BlockingIOError):
            raise UserError(refusal) from None
        return
    _claimed[folder] = descriptor

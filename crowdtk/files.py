"""Writing files so that a killed process never leaves a half-written one, claiming an output for
one run, and file digests.

Writers are atomic: a temporary file (or folder) in the destination folder, then
``os.replace``, so a killed process never leaves a half-written output under the final name,
and an existing output is replaced only once the new one is complete. Temporary names carry the
writer's pid (``.NAME.PID.xxxxxxxx.tmp``), so that a later run can tell a killed writer's leftovers
from a live one's and remove them.

A command claims its output (:func:`claim_output`) for the whole run: an exclusive lock beside
it, so that a second run writing the same path stops at once instead of silently replacing the
first one's result; the output must not be, hold or lie inside one of the command's inputs, so
that ``--force`` can never delete what the command reads; and the "needs --force" rule is checked
again when the output is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from crowdtk.errors import CrowdtkError

STDIO = "-"  # a path argument meaning standard input or output
StrPath: TypeAlias = str | os.PathLike[str]  # a path argument: a str or a Path (any os.PathLike of str)


@functools.cache
def _umask() -> int:
    """The process umask, read once when first needed (os.umask can only be read by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_temporary_prefix(final), suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _named(final):
            yield tmp
        # mkstemp makes 0600, and some writers (safetensors) replace the file with their own:
        # outputs get the usual permissions once written.
        os.chmod(tmp, 0o666 & ~_umask())
        claim = _claim_of(final)
        if claim is not None:
            claim.check_replace(final)
        os.replace(tmp, final)
        if claim is not None:
            claim.written = True
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Build an output folder under a temporary name; move it into place only on success.

    An existing ``path`` is refused unless ``force``; with ``force`` it is replaced only
    after the new folder is complete.
    """
    final = Path(path)
    check_output_free(final, force, folder=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(final), suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        with _named(final):
            yield tmp
        claim = _claim_of(final)
        if claim is not None:
            claim.check_replace(final)
        if final.exists():
            old = final.with_name(f"{_temporary_prefix(final)}old.tmp")
            os.replace(final, old)
            os.replace(tmp, final)
            # What --force replaces may be a file: rmtree leaves a file in place (and would ignore the error).
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(tmp, final)
        if claim is not None:
            claim.written = True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _named(final: Path) -> Iterator[None]:
    """A write that fails without naming a file (a full disk, ``ulimit -f``) names the output it was writing."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(final)
        raise


# --------------------------------------------------------------------------- temporary names

# Room a name needs below the file system's limit for the writers' own names beside it:
# ".NAME.PID.xxxxxxxx.tmp" (a pid up to 10 digits) and ".NAME.lock".
_NAME_ROOM = 24


def _temporary_prefix(final: Path) -> str:
    return f".{final.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove what killed writers of ``path`` left beside it: ``.NAME.PID.….tmp`` files and folders
    whose PID is no longer running. Returns what was removed."""
    final = Path(path)
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(\d+)\..*\.tmp")
    removed: list[Path] = []
    try:
        names = os.listdir(final.parent)
    except OSError:  # no folder yet: nothing left over
        return removed
    for name in names:
        match = pattern.fullmatch(name)
        if match is None or _alive(int(match.group(1))):
            continue
        stale = final.parent / name
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


# --------------------------------------------------------------------------- claiming an output


@dataclass
class _Claim:
    force: bool
    written: bool = False  # this run has written the output (a training run rewrites it every epoch)

    def check_replace(self, final: Path) -> None:
        """At write time: an output that appeared after the start (another program wrote it) needs --force too."""
        if not self.force and not self.written and os.path.lexists(final):
            raise CrowdtkError(
                f"{final}: was created by another program while this run worked",
                "choose another output path, or pass --force to replace it",
            )


_CLAIMS: dict[Path, _Claim] = {}


def _location(path: str | os.PathLike[str]) -> Path:
    """Where a path's directory entry lies: its folder resolved (symlinks, '..'), its own name kept."""
    p = Path(os.path.abspath(path))
    return Path(os.path.realpath(p.parent)) / p.name


def _claim_of(final: Path) -> _Claim | None:
    return _CLAIMS.get(_location(final)) if _CLAIMS else None


def _holder(lock_path: Path) -> str:
    try:
        return f"process {int(lock_path.read_text().strip())}"
    except (OSError, ValueError):
        return "another process"


@contextlib.contextmanager
def _exclusive(final: Path) -> Iterator[None]:
    """An flock on ``.NAME.lock`` beside ``final`` for the length of the block; the file holds the pid.

    The lock file is removed on release. A run that opened the file just before it was removed would
    lock a file no longer in the folder, so after locking, the path must still name the locked file.
    """
    lock_path = final.with_name(f".{final.name}.lock")
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CrowdtkError(
                f"{final}: another crowdtk run ({_holder(lock_path)}) is writing this output",
                "wait for it to finish, or choose another output path",
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        os.close(fd)


@contextlib.contextmanager
def claim_output(
    path: str | os.PathLike[str],
    force: bool,
    *,
    folder: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    lock_only: bool = False,
) -> Iterator[None]:
    """Hold ``path`` as this run's output for the length of the block.

    Before any work: the checks of :func:`check_output_free` (unless ``lock_only``: a folder a command
    adds to, such as a bench folder), the output apart from every input (:func:`check_apart`), the lock
    (a second run stops at once, naming the holder), and the removal of what killed writers of it left
    behind. When the output is written (:func:`atomic_path`, :func:`atomic_dir`), "exists and no
    --force" is checked again. ``-`` (stdout) claims nothing.
    """
    if str(path) == STDIO:
        yield
        return
    if not lock_only:
        check_output_free(path, force, folder)
    check_apart(path, inputs)
    final = _location(path)
    with _exclusive(final):
        remove_stale_temporaries(final)
        _CLAIMS[final] = _Claim(force)
        try:
            yield
        finally:
            del _CLAIMS[final]


def check_apart(output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None]) -> None:
    """Refuse an output that is, holds or lies inside one of ``inputs`` (files or folders): replacing it
    with --force would delete what the command reads."""
    out = _location(output)
    folders: dict[
        str, Path
    ] = {}  # each input's folder resolved once: a manifest names thousands of images in a few folders
    for item in inputs:
        if item is None or str(item) == STDIO:
            continue
        absolute = os.path.abspath(item)
        parent, name = os.path.split(absolute)
        if parent not in folders:
            folders[parent] = Path(os.path.realpath(parent))
        where = folders[parent] / name
        if where == out or out in where.parents or (where in out.parents and os.path.isdir(where)):
            relation = "is" if where == out else ("holds" if out in where.parents else "lies inside")
            raise CrowdtkError(
                f"{output}: the output {relation} {item}, an input of this command",
                "write the output to a path apart from the inputs",
            )


def check_output_free(path: str | os.PathLike[str], force: bool, folder: bool = False) -> None:
    """Before any work: refuse to overwrite an existing output unless ``--force``, and refuse an output that
    cannot be written (a folder where a file goes, or the reverse; the working folder itself; a folder
    without write permission), so that no stage finds out only after its work is done."""
    if str(path) == STDIO:
        return
    p = Path(path)
    if p.exists() and not force:
        raise CrowdtkError(f"{path}: output already exists", "choose another path, or pass --force to replace it")
    if not folder and p.is_dir():
        raise CrowdtkError(
            f"{path}: is a folder, and this output is a file", "name the output file, e.g. DIR/out.jsonl"
        )
    resolved = p.resolve()
    if folder and (
        resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents or resolved.parent == resolved
    ):
        raise CrowdtkError(
            f"{path}: is the working folder (or holds it), which cannot be replaced", "name a new folder for the output"
        )
    parent = next(q for q in [resolved.parent, *resolved.parent.parents] if q.exists())  # the folders below it are made
    name_max = _name_max(parent)
    if len(os.fsencode(p.name)) + _NAME_ROOM > name_max:
        raise CrowdtkError(
            f"{path}: the name is {len(os.fsencode(p.name))} bytes long; crowdtk's temporary files beside it need "
            f"{_NAME_ROOM} bytes more, and names here are limited to {name_max}",
            f"shorten the name to {name_max - _NAME_ROOM} bytes or fewer",
        )
    if not parent.is_dir():
        raise CrowdtkError(f"{path}: {parent} is a file, not a folder", "choose an output path in a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CrowdtkError(
            f"{path}: no permission to write in {parent}", "choose a folder you can write to, or change its permissions"
        )


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes: image identity in manifests, and input digests in artifacts."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_inputs_exist(*paths: str | os.PathLike[str] | None) -> None:
    """Before the seconds torch takes to import: every named input file exists ('-' and None pass)."""
    for path in paths:
        if path is not None and str(path) != STDIO and not Path(path).exists():
            raise CrowdtkError(f"{path}: no such file", "check the path")

"""Writing files so that a killed process never leaves a half-written one, and file digests.

Writers are atomic: a temporary file (or folder) in the destination folder, then
``os.replace``, so a killed process never leaves a half-written output under the final name,
and an existing output is replaced only once the new one is complete.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from crowdtk.errors import CrowdtkError

STDIO = "-"  # a path argument meaning standard input or output


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
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes 0600, and some writers (safetensors) replace the file with their own:
        # outputs get the usual permissions once written.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            # What --force replaces may be a file: rmtree leaves a file in place (and would ignore the error).
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
        raise CrowdtkError(f"{path}: is a folder, and this output is a file", "name the output file, e.g. DIR/out.jsonl")
    resolved = p.resolve()
    if folder and (resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents or resolved.parent == resolved):
        raise CrowdtkError(f"{path}: is the working folder (or holds it), which cannot be replaced", "name a new folder for the output")
    parent = next(q for q in [resolved.parent, *resolved.parent.parents] if q.exists())  # the folders below it are made
    if not parent.is_dir():
        raise CrowdtkError(f"{path}: {parent} is a file, not a folder", "choose an output path in a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CrowdtkError(f"{path}: no permission to write in {parent}", "choose a folder you can write to, or change its permissions")


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

"""What every subcommand shares: stderr logging, progress, errors (the options: crowdtk.cli.options).

stdout carries data only; logs, warnings and progress go to stderr. A
:class:`~crowdtk.errors.CrowdtkError` becomes one line
``crowdtk <command>: error: <what> (<fix>)`` and exit code 1; a traceback is shown only
with ``--verbose``.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import functools
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from crowdtk.cli.groups import expand
from crowdtk.errors import CrowdtkError, Terminated, UsageError
from crowdtk.files import claim_output
from crowdtk.native_stderr import log as decoder_log

# crowdtk.features's logger, named rather than imported: importing that module imports torch.
_features_log = logging.getLogger("crowdtk.features")

# --------------------------------------------------------------------------- messages


class Log:
    """Messages for the person at the terminal, all on stderr; with -v also what the image and video decoders
    warned about (the library records it on the ``crowdtk.decoders`` logger, crowdtk.native_stderr)."""

    def __init__(self, command: str, quiet: bool = False, verbose: bool = False) -> None:
        self.command = command
        self.quiet = quiet
        self.verbose = verbose
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        # One such handler at a time: the latest command's Log (bench runs its steps in this process).
        for handler in [h for h in decoder_log.handlers if isinstance(h, _ToLog)]:
            decoder_log.removeHandler(handler)
        if verbose and not quiet:
            decoder_log.addHandler(_ToLog(self))
        # A recomputed feature cache entry is always a warning (crowdtk.features).
        for stale in [h for h in _features_log.handlers if isinstance(h, _ToWarning)]:
            _features_log.removeHandler(stale)
        _features_log.addHandler(_ToWarning(self))

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False)

    def debug(self, message: str) -> None:
        if self.verbose and not self.quiet:
            self.console.print(message, markup=False, style="dim")

    def warn(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"crowdtk {self.command}: warning: {message}", markup=False, style="yellow")

    @contextlib.contextmanager
    def progress(self, total: int | None, description: str) -> Iterator[Callable[[int], None]]:
        """A Rich progress bar on stderr (total None: unknown); silent with --quiet or off a terminal."""
        if self.quiet or not self.console.is_terminal:

            def ignore(n: int = 1) -> None:
                pass

            yield ignore
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)

            def advance(n: int = 1) -> None:
                bar.advance(task, n)

            yield advance


class _ToLog(logging.Handler):
    def __init__(self, log: Log) -> None:
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.debug(f"crowdtk {self.log.command}: decoder: {record.getMessage()}")


class _ToWarning(logging.Handler):
    def __init__(self, log: Log) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.warn(record.getMessage())


# Ordinary filesystem failures are the user's to fix, not bugs of ours: the one-line error with a fix.
_FILESYSTEM_FIXES = {
    errno.EACCES: "choose a folder you can write to, or change its permissions",
    errno.EPERM: "choose a folder you can write to, or change its permissions",
    errno.EROFS: "the file system is read-only: write the output elsewhere",
    errno.ENOSPC: "the disk is full: free space, or write the output elsewhere",
    errno.EDQUOT: "the disk quota is exceeded: free space, or write the output elsewhere",
    errno.EISDIR: "a folder is in the way: name a file",
    errno.ENOTDIR: "a file is in the way: a folder of the path is a file",
    errno.ENOENT: "check the path; its folder must exist",
    errno.ENAMETOOLONG: "shorten the file name or the path",
    errno.EMFILE: "too many open files for this process: raise the limit (ulimit -n)",
    errno.ENFILE: "too many open files on this system: close some programs and rerun",
    errno.EFBIG: "the file is larger than this process may write: raise the limit (ulimit -f)",
    errno.ELOOP: "a symbolic link points to itself: fix the link",
    errno.EIO: "the disk or the file system reported an input/output error: check it and rerun",
}


def _one_line(message: str) -> str:
    """An error is one stderr line: a multi-line message from a library (torch's, say) is joined."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises Terminated (a KeyboardInterrupt) while a command runs, so it cleans up as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a subcommand: give it the options of the groups it takes (crowdtk.cli.groups), and
    turn errors into one stderr line and exit code 1 (2 for usage errors; 130 after Ctrl-C and 143
    after SIGTERM, both once temporary files are removed). The result's ``name`` is ``command``."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = expand(func, command)

        # Not the annotations: Typer reads the signature through __wrapped__, where a deferred option is made anew
        # each time (crowdtk.cli.groups); a copy taken here would hold the registries as they were at import.
        @functools.wraps(func, assigned=("__module__", "__name__", "__qualname__", "__doc__"), updated=())
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            verbose = bool(kwargs.get("verbose", False))
            try:
                with _sigterm_unwinds(), contextlib.ExitStack() as claims:
                    token = _COMMAND_CLAIMS.set(claims)
                    try:
                        return func(*args, **kwargs)
                    finally:
                        _COMMAND_CLAIMS.reset(token)
            except (typer.Exit, typer.Abort, SystemExit):
                raise
            except CrowdtkError as exc:
                if verbose:
                    traceback.print_exc(file=sys.stderr)
                sys.stderr.write(f"crowdtk {command}: error: {_one_line(str(exc))}\n")
                raise typer.Exit(2 if isinstance(exc, UsageError) else 1) from None
            except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
                how = "terminated" if isinstance(exc, Terminated) else "interrupted"
                detail = f" {exc}" if str(exc) else ""  # e.g. train: "after epoch 3; continue with --resume"
                sys.stderr.write(f"crowdtk {command}: {how}{detail}\n")
                raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
            except BrokenPipeError:
                # A downstream `head` closed the pipe: not an error of ours.
                raise typer.Exit(0) from None
            except OSError as exc:  # a file system's refusal, named with its path; never a traceback
                fix = _FILESYSTEM_FIXES.get(exc.errno or 0, "check the file and the file system, and rerun")
                if verbose:
                    traceback.print_exc(file=sys.stderr)
                where = f"{exc.filename}: " if exc.filename else ""
                sys.stderr.write(f"crowdtk {command}: error: {where}{exc.strerror or exc} ({fix})\n")
                raise typer.Exit(1) from None
            except Exception as exc:  # an unexpected failure is still one readable line
                if verbose:
                    traceback.print_exc(file=sys.stderr)
                sys.stderr.write(
                    f"crowdtk {command}: error: unexpected {type(exc).__name__}: {_one_line(str(exc))} "
                    "(re-run with --verbose for a traceback, and report it)\n"
                )
                raise typer.Exit(1) from None

        # Its own (*args, **kwargs) are no options; the command's are read through __wrapped__.
        wrapper.__annotations__ = {}
        wrapper.name = command  # type: ignore[attr-defined]  # what crowdtk.cli registers it as
        return wrapper

    return decorate


# The outputs the running command has claimed, released when it ends (a bench's steps run in its process,
# each its own command).
_COMMAND_CLAIMS: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar(
    "crowdtk_command_claims", default=None
)


def claim(
    path: str | Path | None,
    force: bool,
    *,
    folder: bool = False,
    inputs: tuple[str | Path | None, ...] = (),
    lock_only: bool = False,
) -> None:
    """Claim ``path`` as the running command's output until the command ends (crowdtk.files.claim_output): refused when
    it exists without --force, when another run holds it, or when it is, holds or lies inside one of ``inputs`` or a
    file they name (a manifest's images and points). None (no such output asked for) claims nothing."""
    if path is None:
        return
    claims = _COMMAND_CLAIMS.get()
    assert claims is not None, "claim() is called inside a command (run_command)"
    from crowdtk.formats import with_named_files  # formats reads the inputs; files only compares paths

    claims.enter_context(
        claim_output(path, force, folder=folder, inputs=with_named_files(*inputs), lock_only=lock_only)
    )


def given_options(ctx: typer.Context) -> set[str]:
    """The names of the parameters given on the command line (or by environment), not left at their defaults:
    what a command that starts from named settings (bench --recipe) lets replace them."""
    return {
        name
        for name in ctx.params
        if (source := ctx.get_parameter_source(name)) is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
    }


def params_of(**kwargs: Any) -> dict[str, Any]:
    """Resolved command parameters as recorded in artifacts (paths as strings)."""
    return {
        k: (str(v) if isinstance(v, Path) else v) for k, v in kwargs.items() if k not in {"quiet", "verbose", "force"}
    }

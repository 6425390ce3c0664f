"""The one error type of crowdtk.

Every failure a user can act on is a :class:`CrowdtkError` carrying *what* went wrong
(naming the file) and *how to fix it*. The CLI prints it as
``crowdtk <command>: error: <what> (<fix>)`` and exits 1; a :class:`UsageError` (options that
contradict each other or miss a partner) exits 2, as Click's own usage errors do.
"""

from __future__ import annotations

import re


class CrowdtkError(Exception):
    """A data or runtime problem the user can fix."""

    def __init__(self, what: str, fix: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.what} ({self.fix})" if self.fix else self.what

    def as_skipped(self) -> str:
        """The message for a list of skipped inputs (--skip-bad): the fix without "pass --skip-bad", which was."""
        fix = re.sub(r"(,? or )?pass --skip-bad[^,;)]*", "", self.fix).strip(" ,;")
        return f"{self.what} ({fix})" if fix else self.what


class UsageError(CrowdtkError):
    """A command line that cannot be run as given (exit code 2)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it unwinds as after Ctrl-C: finished work is kept,
    temporary files are removed, and the command exits 143 with a message."""

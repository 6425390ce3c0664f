"""Named records of an extension point: the selection strategies, the labeling tools, the counter models and the
bench's methods each keep one :class:`Registry`.

A record is a frozen dataclass with a ``name`` (as typed on the command line and written into files), a one-line
``help`` (what ``--help`` says of it) and whatever its extension point needs: its implementation and its
capabilities. It is registered once, next to its implementation, and everything else reads it from there: the
command line's choices and help, the checks of a command's inputs, the bench's methods and the docs. Records
are checked when they are registered (:meth:`Registry.register`): a name registered twice or a record missing a
part fails then, at import of the module that registers it, not when a command first uses it.

The command line reads a registry each time it builds a command (:class:`crowdtk.cli.groups.Deferred`), so an
entry registered from the user's own code before ``crowdtk.cli.main()`` runs is offered like the built-in ones.
This module imports nothing: the registries are read without paying for what their entries need.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

# Names go on command lines and into files: lower case, digits and + . _ - (mdc+cap), starting with a letter or digit.
_NAME = re.compile(r"[a-z0-9][a-z0-9+._-]*")


class RegistrationError(ValueError):
    """A record that cannot be registered: its name is taken or malformed, or it lacks a part (a programming error,
    raised at import of the module that registers it)."""


class Record(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def help(self) -> str: ...


R = TypeVar("R", bound=Record)


class Registry(Mapping[str, R], Generic[R]):
    """The records of one extension point by name, in the order they were registered (the order --help lists)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # what a record is, in messages: "strategy", "labeling tool", ...
        self._records: dict[str, R] = {}
        self._checks: list[Callable[[R], None]] = []

    def add_check(self, check: Callable[[R], None]) -> None:
        """Check every record registered so far with ``check`` (raising RegistrationError), and every later one when it
        is registered: for what only a module that imports more than the registry can check (a model's builder)."""
        for record in self._records.values():
            check(record)
        self._checks.append(check)

    def register(self, record: R) -> R:
        """Add ``record`` after checking it (its own ``check()``, when it has one); returns it."""
        name = getattr(record, "name", None)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise RegistrationError(
                f"{self.kind} name {name!r}: use lower case letters, "
                "digits and + . _ -, starting with a letter or digit"
            )
        if name in self._records:
            raise RegistrationError(f"the {self.kind} {name!r} is registered twice")
        text = getattr(record, "help", None)
        if not isinstance(text, str) or not text.strip() or "\n" in text:
            raise RegistrationError(f"the {self.kind} {name!r} needs a one-line help text")
        check = getattr(record, "check", None)
        if check is not None:
            check()
        for added in self._checks:
            added(record)
        self._records[name] = record
        return record

    def unregister(self, name: str) -> R:
        """Remove the record ``name`` and return it (a test's or a plugin's entry, when it is done)."""
        return self._records.pop(name)

    def __getitem__(self, name: str) -> R:
        return self._records[name]

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._records))  # a copy: registering while iterating is allowed

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._records)})"


def listing(records: Mapping[str, Record] | list[Record], last: str = "or") -> str:
    """``a (its help), b (its help) or c (its help)``: the records for a --help text, in their order."""
    items = [f"{r.name} ({r.help})" for r in (records.values() if isinstance(records, Mapping) else records)]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}" if items else ""


def names(records: Mapping[str, Record] | Sequence[Record], last: str = "and") -> str:
    """``a, b and c``: the names of ``records``, for a --help text."""
    items = [r.name for r in (records.values() if isinstance(records, Mapping) else records)]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}" if items else ""

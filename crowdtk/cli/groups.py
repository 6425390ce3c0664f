"""Options that several commands take, declared once as a group and taken by a command as one value; and
options whose choices and help are read from a registry when the command is built.

A group is a function: its keyword parameters are the options (Annotated typer.Option types with
defaults) and its result is what the command receives. A command takes a group with a parameter
whose default is the group, as in ``predict: PredictConfig = PREDICTION``. Typer builds a command's
options from ``inspect.signature``, so :func:`expand` gives the command a signature in which each
group's parameter is replaced by the group's options, in its place (``--help`` keeps their order),
and calls the command with the group's result in that parameter.

A :func:`Deferred` parameter (a command's or a group's) has its type and help made each time Typer
reads that signature, which it does whenever it builds the command: on every run of ``crowdtk`` and
every ``--help``. The choices and help of an extension point's option (``select --strategy``,
``export --to``, ``train --model``, ...) are read from its registry then, not when ``crowdtk.cli`` is
imported, so that a strategy, tool or model registered from the user's own code before the command
runs is offered, listed and accepted like the built-in ones.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any


class Group:
    """The options of ``build``'s keyword parameters. A first positional-only parameter is no option:
    it receives the name of the command (``crowdtk <command>: ...`` messages)."""

    def __init__(self, build: Callable[..., Any], leave_out: Iterable[str] = ()) -> None:
        params = list(inspect.signature(build, eval_str=True).parameters.values())
        self.build = build
        self.named = bool(params) and params[0].kind is inspect.Parameter.POSITIONAL_ONLY
        self.leave_out = frozenset(leave_out)
        unknown = self.leave_out - {p.name for p in params}
        if unknown:
            raise ValueError(f"{build.__name__} has no option {', '.join(sorted(unknown))}")
        self.options = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in (params[1:] if self.named else params)
            if p.name not in self.leave_out
        ]

    def without(self, *names: str) -> Group:
        """This group less the options ``names``, which then keep ``build``'s defaults."""
        return Group(self.build, self.leave_out | set(names))

    def value(self, command: str, options: dict[str, Any]) -> Any:
        return self.build(command, **options) if self.named else self.build(**options)


class DeferredParameter:
    """A parameter's default that stands for a parameter made when the command is built: ``annotation()`` returns
    its Annotated type (with its typer.Option or typer.Argument), ``default`` is its default, or ``default_from()``
    makes it then too. The command receives the value itself: the chosen name where the type is a choices enum."""

    def __init__(
        self,
        annotation: Callable[[], Any],
        default: Any = inspect.Parameter.empty,
        *,
        default_from: Callable[[], Any] | None = None,
    ) -> None:
        self.annotation = annotation
        self.default = default
        self.default_from = default_from

    def parameter(self, p: inspect.Parameter) -> inspect.Parameter:
        return p.replace(
            annotation=self.annotation(), default=self.default if self.default_from is None else self.default_from()
        )


def Deferred(
    annotation: Callable[[], Any],
    default: Any = inspect.Parameter.empty,
    *,
    default_from: Callable[[], Any] | None = None,
) -> Any:
    """A :class:`DeferredParameter`, as a parameter's default. Typed Any, as ``typer.Option`` is: the default
    stands for a value of the parameter's own type, which is what the command receives."""
    return DeferredParameter(annotation, default, default_from=default_from)


class Expanded:
    """``func`` as Typer sees it: the groups' options in place of the groups, the deferred parameters made anew
    each time the signature is read (a property: Typer reads ``__signature__`` whenever it builds the command)."""

    def __init__(self, func: Callable[..., Any], command: str) -> None:
        signature = inspect.signature(func, eval_str=True)
        self.groups = {p.name: p.default for p in signature.parameters.values() if isinstance(p.default, Group)}
        params: list[inspect.Parameter] = []
        for p in signature.parameters.values():
            # Keyword-only, as Typer passes every value: a group's defaulted options may then precede a required one.
            params += (
                self.groups[p.name].options
                if p.name in self.groups
                else [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)]
            )
        self.params = params
        self.deferred = {p.name for p in params if isinstance(p.default, DeferredParameter)}
        self.returns = signature.return_annotation
        self.func = func
        self.command = command
        functools.update_wrapper(self, func, assigned=("__module__", "__name__", "__qualname__", "__doc__"), updated=())

    @property
    def __signature__(self) -> inspect.Signature:
        params = [p.default.parameter(p) if p.name in self.deferred else p for p in self.params]
        return inspect.Signature(params, return_annotation=self.returns)

    @property
    def __annotations__(self) -> dict[str, Any]:  # type: ignore[override]
        signature = self.__signature__
        return {p.name: p.annotation for p in signature.parameters.values()} | {"return": signature.return_annotation}

    def __call__(self, **values: Any) -> Any:
        for name in self.deferred:
            if isinstance(values.get(name), Enum):  # a registry's choices enum: the name chosen
                values[name] = values[name].value
        for name, group in self.groups.items():
            values[name] = group.value(self.command, {o.name: values.pop(o.name) for o in group.options})
        return self.func(**values)


def expand(func: Callable[..., Any], command: str) -> Callable[..., Any]:
    """``func`` with the options of the groups it takes, and its deferred parameters, in its signature (``func``
    itself if it takes neither)."""
    expanded = Expanded(func, command)
    return expanded if expanded.groups or expanded.deferred else func

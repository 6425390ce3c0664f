"""Options that several commands take, declared once as a group and taken by a command as one value.

A group is a function: its keyword parameters are the options (Annotated typer.Option types with
defaults) and its result is what the command receives. A command takes a group with a parameter
whose default is the group, as in ``predict: PredictConfig = PREDICTION``. Typer builds a command's
options from ``inspect.signature``, so :func:`expand` gives the command a signature in which each
group's parameter is replaced by the group's options, in its place (``--help`` keeps their order),
and calls the command with the group's result in that parameter.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
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
        self.options = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in (params[1:] if self.named else params)
                        if p.name not in self.leave_out]

    def without(self, *names: str) -> Group:
        """This group less the options ``names``, which then keep ``build``'s defaults."""
        return Group(self.build, self.leave_out | set(names))

    def value(self, command: str, options: dict[str, Any]) -> Any:
        return self.build(command, **options) if self.named else self.build(**options)


def expand(func: Callable[..., Any], command: str) -> Callable[..., Any]:
    """``func`` with the options of the groups it takes in its signature (``func`` itself if it takes none)."""
    signature = inspect.signature(func, eval_str=True)
    groups = {p.name: p.default for p in signature.parameters.values() if isinstance(p.default, Group)}
    if not groups:
        return func
    params: list[inspect.Parameter] = []
    for p in signature.parameters.values():
        # Keyword-only, as Typer passes every value: a group's defaulted options may then precede a required one.
        params += groups[p.name].options if p.name in groups else [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)]

    @functools.wraps(func)
    def wrapper(**values: Any) -> Any:
        for name, group in groups.items():
            values[name] = group.value(command, {o.name: values.pop(o.name) for o in group.options})
        return func(**values)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": signature.return_annotation}
    return wrapper

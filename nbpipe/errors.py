"""The one exception tree of nbpipe.

Every error nbpipe raises on purpose derives from :class:`NbpipeError`. The
exceptions carry their fields as attributes and pickle cleanly, because they
cross process boundaries (worker -> driver).

::

    NbpipeError
    ├── UsageError                 bad command-line or API arguments       (exit 2)
    ├── NotebookError              the notebook cannot be read             (exit 2)
    ├── TagError                   a known tag with a bad value            (exit 2)
    │   └── UnsupportedTagError    a valid tag the chosen site cannot honour
    ├── GraphError                 the apps do not form a valid graph      (exit 2)
    │   └── CycleError             the apps depend on each other in a loop
    ├── SiteError                  unknown or malformed site               (exit 2)
    ├── WorkerError                the site's workers cannot run apps      (exit 1)
    ├── ShipError                  a value cannot be moved between apps
    ├── StateError                 carried interpreter state failed to replay in an app
    ├── MutationError              an app changed a value unpredicted, and the
    │                              apps that read it cannot re-run with the change
    ├── OutputError                the merged notebook or report could not be written
    │                              after the run (paths are checked before it)  (exit 1)
    └── RunError                   one or more apps failed or timed out    (exit 1)

Warnings are Python warnings (``warnings.warn``), so a notebook that drives a
pipeline shows them and a caller can filter them by class; ``nbpipe``'s
command line prints them as ``nbpipe: warning: ...`` lines::

    NbpipeWarning (UserWarning)
    └── ParameterWarning           a given parameter the notebook does not declare
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "NbpipeError",
    "UsageError",
    "NotebookError",
    "TagError",
    "UnsupportedTagError",
    "GraphError",
    "CycleError",
    "SiteError",
    "WorkerError",
    "ShipError",
    "StateError",
    "MutationError",
    "OutputError",
    "RunError",
    "NbpipeWarning",
    "ParameterWarning",
]


class NbpipeError(Exception):
    """Root of every error nbpipe raises on purpose."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from the fields, so subclasses with keyword-only fields pickle.
        return (_rebuild, (type(self), self.__dict__.copy()))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[NbpipeError], state: dict[str, Any]) -> NbpipeError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


class UsageError(NbpipeError):
    """The command line or API call is wrong."""


class NotebookError(NbpipeError):
    """The notebook cannot be read or is not a valid notebook."""


class TagError(NbpipeError):
    """A known tag has a bad value. Names the cell (index and id) and the tag."""

    def __init__(self, problem: str, *, cell_index: int, cell_id: str | None, tag: str) -> None:
        self.problem = problem
        self.cell_index = cell_index
        self.cell_id = cell_id
        self.tag = tag
        super().__init__(f"cell {cell_index} (id {cell_id}): tag {tag!r}: {problem}")


class UnsupportedTagError(TagError):
    """A valid tag that the chosen site cannot honour (yet); nothing runs."""


class GraphError(NbpipeError):
    """The apps do not form a valid dependency graph."""


class CycleError(GraphError):
    """Apps depend on each other in a loop; ``cycle`` lists the apps in order."""

    def __init__(self, cycle: list[tuple[str, str, str]]) -> None:
        self.cycle = cycle
        chain = cycle[0][0] + "".join(f" -> {v} ({why})" for _, v, why in cycle)
        super().__init__(
            f"the apps form a cycle: {chain}; "
            "remove an after: tag or move the definition of a variable above its first reader"
        )


class SiteError(NbpipeError):
    """The site is unknown or its definition is malformed."""


class WorkerError(NbpipeError):
    """The site's workers did not start in time, or lack what nbpipe needs."""

    exit_code = 1


class ShipError(NbpipeError):
    """A value an app defines cannot be shipped to the apps that read it."""

    exit_code = 1

    def __init__(
        self, *, variable: str, type_name: str, producer: str, consumers: list[str], reason: str,
        fix: str | None = None,
    ) -> None:
        self.variable = variable
        self.type_name = type_name
        self.producer = producer
        self.consumers = consumers
        self.reason = reason
        readers = ", ".join(consumers)
        self.fix = fix or (
            f"create it in a 'setup' cell, or recreate it in the app(s) {readers} that read it, "
            "instead of passing it between apps, or register a serializer for its type "
            "(nbpipe.serializers.register)"
        )
        super().__init__(
            f"variable {variable!r} of type {type_name} defined by app {producer!r} "
            f"cannot be shipped to app(s) {readers}: {reason}. Fix: {self.fix}."
        )


class StateError(NbpipeError):
    """A statement that set interpreter state in an earlier cell failed when an
    app replayed it (the carried-state prelude)."""

    exit_code = 1

    def __init__(self, *, cell: int, app: str, statement: str, reason: str) -> None:
        self.cell = cell
        self.app = app
        self.statement = statement
        self.reason = reason
        super().__init__(
            f"replaying `{statement}` from cell {cell} (app {app!r}), which later apps carry "
            f"as serial execution would, failed: {reason}. Fix: make the statement work in a "
            "fresh process, or move it into a 'setup' cell."
        )


class MutationError(NbpipeError):
    """App ``app`` changed ``variable`` (received from ``source``) through code
    the static analysis cannot see, and the apps that read the changed value
    (``readers``) cannot re-run with it: ``reason`` says why."""

    exit_code = 1

    def __init__(self, *, app: str, variable: str, source: str, readers: list[str], reason: str) -> None:
        self.app = app
        self.variable = variable
        self.source = source
        self.readers = readers
        self.reason = reason
        super().__init__(
            f"app {app!r} changed {variable!r} (received from {source}) through a call nbpipe "
            f"cannot see, and {reason}. Fix: make the change explicit in app {app!r} "
            f"(`{variable} = ...`, e.g. `{variable} = {variable}` after the change), or give "
            f"app {app!r} a copy to change (`{variable} = {variable}.copy()`).")


class OutputError(NbpipeError):
    """Writing the merged notebook or the report failed after the run (the
    paths were checked writable before it); the run directory is kept."""

    exit_code = 1


class RunError(NbpipeError):
    """One or more apps failed or timed out; the merged notebook was still written."""

    exit_code = 1


class NbpipeWarning(UserWarning):
    """Root of every warning nbpipe gives on purpose."""


class ParameterWarning(NbpipeWarning):
    """A parameter was given (``origin``: ``-p NAME``, a YAML file, ``parameters``) that the
    notebook's parameters cells do not set. It is injected all the same, as papermill does:
    a typo then defines a name nobody reads, so the message names the closest parameter."""

    def __init__(self, *, name: str, origin: str, suggestion: str | None = None,
                 parameters: tuple[str, ...] = (), has_cell: bool = True) -> None:
        self.name = name
        self.origin = origin
        self.suggestion = suggestion
        self.parameters = parameters
        self.has_cell = has_cell
        super().__init__(self._message())

    def _message(self) -> str:
        name = _short(repr(self.name))
        if not self.has_cell:
            return (f"{_short(self.origin)}: the notebook has no cell tagged 'parameters', so {name} is set "
                    "at its top, where any cell that assigns it overrides it; tag the cell that sets "
                    "the defaults 'parameters'")
        message = f"{_short(self.origin)}: the notebook has no parameter {name}"
        if self.suggestion:
            message += f"; did you mean {self.suggestion!r}?"
        elif self.parameters:
            listed = ", ".join(self.parameters[:10]) + (", ..." if len(self.parameters) > 10 else "")
            message += f"; its parameters are: {listed}"
        else:
            message += "; its parameters cell sets none"
        return message + " (injected anyway)"

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_warning, (type(self), self.__dict__.copy()))


def _rebuild_warning(cls: type[ParameterWarning], state: dict[str, Any]) -> ParameterWarning:
    return cls(**state)


def _short(text: str) -> str:
    """``text`` for a one-line message: quoted where it holds what a terminal would act on, cut when long."""
    shown = repr(text) if not text.isprintable() else text
    return shown if len(shown) <= 80 else shown[:77] + "..."

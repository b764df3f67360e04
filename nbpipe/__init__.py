"""nbpipe: compile a tagged Jupyter notebook into a parallel pipeline of apps,
run it on a site, and merge the results into one executed narrative notebook."""

from __future__ import annotations

from typing import Any

from .errors import (
    CycleError,
    GraphError,
    MutationError,
    NbpipeError,
    NbpipeWarning,
    NotebookError,
    OutputError,
    ParameterWarning,
    RunError,
    ShipError,
    SiteError,
    StateError,
    TagError,
    UnsupportedTagError,
    UsageError,
    WorkerError,
)
from .version import __version__

__all__ = [
    "__version__",
    "CycleError",
    "GraphError",
    "MutationError",
    "NbpipeError",
    "NbpipeWarning",
    "NotebookError",
    "OutputError",
    "ParameterWarning",
    "RunError",
    "RunResult",
    "ShipError",
    "SiteError",
    "StateError",
    "TagError",
    "UnsupportedTagError",
    "UsageError",
    "VerifyResult",
    "WorkerError",
    "execute",
    "load_pipeline",
    "verify",
]


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext nbpipe``: the ``%nbpipe`` and ``%%nbpipe`` magics (:mod:`nbpipe.magics`)."""
    from .magics import load_ipython_extension as load

    load(shell)


def __getattr__(name: str) -> Any:
    """The API is imported when first used: a worker (or a container) that only runs
    tasks imports ``nbpipe.execution`` without the compiler's dependencies."""
    if name in ("RunResult", "VerifyResult", "execute", "load_pipeline", "verify"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'nbpipe' has no attribute {name!r}")

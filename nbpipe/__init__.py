"""nbpipe: compile a tagged Jupyter notebook into a parallel pipeline of apps,
run it on a site, and merge the results into one executed narrative notebook."""

from __future__ import annotations

from .api import RunResult, VerifyResult, execute, load_pipeline, verify
from .errors import (
    CycleError,
    GraphError,
    MutationError,
    NbpipeError,
    NotebookError,
    OutputError,
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
    "NotebookError",
    "OutputError",
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

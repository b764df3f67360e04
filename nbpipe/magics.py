"""``%nbpipe`` and ``%%nbpipe``: the command line inside a Jupyter kernel (``%load_ext nbpipe``).

``%nbpipe execute [NB] [options]`` takes ``nbpipe execute``'s options (the
CLI's own parser), runs the pipeline with a live status view in the cell
(:class:`nbpipe.status.LiveView`) and returns the :class:`~nbpipe.api.RunResult`;
``--pull`` then puts the final value of every name the apps define into this
kernel's namespace. ``%nbpipe check`` and ``%nbpipe graph`` print what the
commands print (``graph`` without ``--format`` returns the Pipeline, which
shows as tables). NB defaults to the notebook this kernel belongs to, when
that can be found (:func:`kernel_notebook`). In ``%%nbpipe``, the cell's body
is a YAML block of parameters (as a file given with ``-f``; ``-p`` still wins).

Bad input is one line (``UsageError: nbpipe: ...``), never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError as MagicUsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from .errors import NbpipeError, UsageError

__all__ = ["NbpipeMagics", "kernel_notebook", "load_ipython_extension"]

COMMANDS = ("execute", "check", "graph")


def load_ipython_extension(shell: Any) -> None:
    shell.register_magics(NbpipeMagics)


@magics_class
class NbpipeMagics(Magics):  # type: ignore[misc]
    @line_cell_magic
    def nbpipe(self, line: str, cell: str | None = None) -> Any:
        """%nbpipe execute [NB] [nbpipe execute's options]; %nbpipe check|graph [NB];
        %%nbpipe ... with a YAML block of parameters as the cell."""
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise MagicUsageError(f"nbpipe: {exc} in: {line}") from None
        if not argv or argv[0] not in COMMANDS:
            raise MagicUsageError(f"nbpipe: give one of {', '.join(COMMANDS)}, e.g. %nbpipe execute --pull")
        with tempfile.TemporaryDirectory(prefix="nbpipe-cell-") as scratch:
            body = Path(scratch) / "cell-parameters.yaml"
            if cell is not None and cell.strip():
                body.write_text(cell, encoding="utf-8")
                argv[1:1] = ["-f", str(body)]
            try:
                return _run(argv, self.shell)
            except NbpipeError as exc:  # the cell's parameters are named as such, not by the scratch file
                raise MagicUsageError("nbpipe: " + str(exc).replace(str(body), "the %%nbpipe cell")) from None


def _parse(argv: list[str]) -> Any:
    """The command's arguments, by the CLI's own parser; argparse's complaint as one line."""
    from . import cli

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return cli._parser(notebook_optional=True).parse_args(argv)
    except SystemExit as exc:
        if not exc.code:
            raise  # --help was printed
        lines = said.getvalue().strip().splitlines() or ["bad arguments"]
        raise UsageError(f"{lines[-1].removeprefix('nbpipe: error: ')}; "
                          f"%nbpipe {argv[0]} --help lists the options") from None


def _run(argv: list[str], shell: Any) -> Any:
    try:
        args = _parse(argv)
    except SystemExit:
        return None  # after --help
    if args.notebook is None:
        args.notebook = kernel_notebook(shell)
    if args.command == "execute":
        return _execute(args)
    if args.command == "graph" and args.format == "text":
        from .api import load_pipeline

        return load_pipeline(args.notebook, args.split)
    args.func(args)
    return None


def _execute(args: Any) -> Any:
    from . import cli
    from .api import execute, load_pipeline
    from .status import LiveView

    view = LiveView(load_pipeline(args.notebook, args.split, args.cache_dir))
    arguments = cli._execute_arguments(args, on_event=view)
    with view:
        run = execute(args.notebook, **arguments)
        view.board.ok = run.ok
    return run


def kernel_notebook(shell: Any) -> Path:
    """The notebook this kernel runs: VS Code's ``__vsc_ipynb_file__``, else Jupyter
    Server's ``JPY_SESSION_NAME`` (absolute, or relative to the server's root, which
    is this directory or one above it); else the magic needs it named."""
    vscode = (shell.user_ns if shell is not None else {}).get("__vsc_ipynb_file__")
    if vscode and Path(vscode).is_file():
        return Path(vscode)
    found = session_notebook(os.environ.get("JPY_SESSION_NAME", ""), Path.cwd())
    if found is not None:
        return found
    raise UsageError("name the notebook (e.g. %nbpipe execute analysis.ipynb): this kernel's own "
                      "notebook is not known here (neither JPY_SESSION_NAME nor VS Code's "
                      "__vsc_ipynb_file__ names one)")


def session_notebook(name: str, cwd: Path) -> Path | None:
    """The notebook ``JPY_SESSION_NAME`` names, seen from ``cwd`` (the kernel starts in
    the notebook's directory; the name is the path from the server's root)."""
    if not name.endswith(".ipynb"):
        return None  # a console's session, or none
    path = Path(name).expanduser()
    if path.is_absolute():
        return path if path.is_file() else None
    parts = path.parts
    # The notebook's own directory first: cwd ends with the name's directories.
    if len(parts) == 1 or cwd.parts[-(len(parts) - 1):] == parts[:-1]:
        if (cwd / path.name).is_file():
            return cwd / path.name
    for root in (cwd, *cwd.parents):
        if (root / path).is_file():
            return root / path
    return None

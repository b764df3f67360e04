"""The command line: thin commands over the library (SPEC §4).

Each command parses its arguments, calls one library function, and maps the
library's errors to a one-line message and an exit code: 0 success, 1 an app
failed or timed out, 2 bad usage or bad input (nothing ran), 128 + N when signal
N stopped the run (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP; :mod:`.stop`), 141 when
stdout's reader left early.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import stop
from .version import __version__
from .errors import NbpipeError, UsageError

__all__ = ["entry", "main"]

COMMANDS = ("execute", "check", "graph", "tag", "compile", "render", "verify", "cache", "sites")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    # The handlers stay in place while the outcome is reported: a second Ctrl-C
    # then only hurries the cleanup, it does not interrupt the report.
    with stop.handled(), _warnings_as_lines():
        try:
            return int(args.func(args))
        except NbpipeError as exc:
            print(f"nbpipe: error: {exc}", file=sys.stderr)
            return exc.exit_code
        except BrokenPipeError:
            return _reader_left()
        except KeyboardInterrupt as exc:
            stop.hold()
            return _interrupted(exc)


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """The library's warnings (:class:`~nbpipe.errors.NbpipeWarning`) as ``nbpipe: warning:``
    lines on stderr, every time; other warnings as Python shows them."""
    from .errors import NbpipeWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", NbpipeWarning)
        python_shows = warnings.showwarning

        def show(message: Any, category: Any, *where: Any, **more: Any) -> None:
            if issubclass(category, NbpipeWarning):
                print(f"nbpipe: warning: {message}", file=sys.stderr, flush=True)
            else:
                python_shows(message, category, *where, **more)

        warnings.showwarning = show
        yield


def entry() -> None:
    """The ``nbpipe`` command and ``python -m nbpipe``: :func:`main` as a process.

    A stop signal before the command starts its work ends the process with
    128 + N, without a traceback; one that comes once the command has ended
    (a second Ctrl-C while the process exits) is ignored: the exit status
    already says how the run ended.
    """
    for sig in stop.SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _exit_on_signal)
    code = main()
    for sig in stop.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)  # kept while the interpreter shuts down
    sys.exit(code)


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _interrupted(exc: KeyboardInterrupt) -> int:
    run = getattr(exc, "run_result", None)
    where = f"; the partial merged notebook is in {run.output}" if run else ""
    what = f" by {signal.Signals(exc.signum).name}" if isinstance(exc, stop.Stopped) else ""
    print(f"nbpipe: interrupted{what}{where}", file=sys.stderr)
    return exc.exit_code if isinstance(exc, stop.Stopped) else 130


def _reader_left() -> int:
    """stdout's reader closed the pipe (``nbpipe graph nb.ipynb | head``): end quietly, as
    ``cat`` does, with SIGPIPE's exit status; nothing more is written to the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def _parser(notebook_optional: bool = False) -> argparse.ArgumentParser:
    """The commands and their options; ``notebook_optional``: the %nbpipe magic's, where
    the notebook defaults to the kernel's own (:mod:`nbpipe.magics`)."""
    parser = argparse.ArgumentParser(
        prog="nbpipe",
        description="Run a tagged Jupyter notebook as a parallel pipeline of apps and merge "
                    "the results into one executed notebook.")
    parser.add_argument("--version", action="version", version=f"nbpipe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("execute", help="run the notebook's apps and write the merged notebook")
    _run_options(p, notebook_optional)
    _engine_options(p)
    p.add_argument("--no-cache", action="store_true", help="run every app and store nothing in the cache")
    p.add_argument("--refresh", action="append", default=[], metavar="APP",
                   help="run APP and every app that depends on it, whatever the cache holds (repeatable)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--pull", action="store_true", help="in Jupyter (%%nbpipe execute): put the final value of "
                   "every name the apps define into the kernel's namespace")
    p.set_defaults(func=_execute)

    p = sub.add_parser("verify", help="re-run every app ignoring the cache; list the apps whose "
                                      "outputs differ from the cached ones")
    _run_options(p)
    _engine_options(p)
    p.set_defaults(func=_verify)

    p = sub.add_parser("cache", help="list, clear or prune the cache of app results")
    cache = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("list", "list the cached results (of NOTEBOOK's runs, if given)"),
                         ("clear", "remove the cached results (of NOTEBOOK's runs, if given)"),
                         ("prune", "remove results unused for a while, or beyond a size")):
        q = cache.add_parser(action, help=text)
        if action != "prune":
            q.add_argument("notebook", type=Path, nargs="?")
        q.add_argument("--cache-dir", type=Path, metavar="DIR", help="the cache (default: "
                       "$NBPIPE_CACHE_DIR, else SITE's cache_dir, else .nbpipe-cache beside NOTEBOOK or here)")
        q.add_argument("--site", help="use the cache_dir of this site's definition")
        q.add_argument("--sites", type=Path, metavar="FILE", help="a sites file (default: nbpipe.toml "
                       "beside NOTEBOOK or here)")
        if action == "prune":
            q.add_argument("--older-than", metavar="AGE", help="unused for longer than AGE (30d, 12h)")
            q.add_argument("--max-size", metavar="SIZE", help="keep the most recently used up to SIZE (5GB)")
        q.set_defaults(func=_cache, notebook=None)

    p = sub.add_parser("check", help="validate tags, dataflow, parameters and output paths; "
                                     "print apps, edges and parameters")
    _run_options(p, notebook_optional)
    p.add_argument("--json", action="store_true", help="print what check found as JSON on stdout")
    p.set_defaults(func=_check)

    p = sub.add_parser("graph", help="print the app graph")
    p.add_argument("notebook", type=Path, nargs="?" if notebook_optional else None)
    p.add_argument("--format", choices=("text", "dot", "mermaid", "svg", "json"), default="text")
    _split_option(p)
    p.set_defaults(func=_graph)

    p = sub.add_parser("tag", help="write the tags a --split would use into a copy of the notebook")
    p.add_argument("notebook", type=Path, nargs="?" if notebook_optional else None)
    _split_option(p, required=True)
    p.add_argument("-o", "--output", type=Path, help="the tagged notebook (default: NAME.tagged.ipynb)")
    p.set_defaults(func=_tag)

    p = sub.add_parser("compile", help="write the task notebooks and the graph; run nothing")
    p.add_argument("notebook", type=Path)
    p.add_argument("-d", "--directory", type=Path, required=True)
    _split_option(p)
    p.set_defaults(func=_compile)

    p = sub.add_parser("render", help="render an executed notebook as HTML")
    p.add_argument("notebook", type=Path)
    p.add_argument("-o", "--output", type=Path, help="default: NAME.html beside the notebook")
    p.add_argument("--no-input", action="store_true", help="results only: no code in the report")
    p.set_defaults(func=_render)

    p = sub.add_parser("sites", help="list the sites known here and where each is defined")
    p.add_argument("notebook", type=Path, nargs="?", help="also look for nbpipe.toml beside it")
    p.add_argument("--sites", type=Path, metavar="FILE", help="a sites file")
    p.set_defaults(func=_sites)
    return parser


def _run_options(p: argparse.ArgumentParser, notebook_optional: bool = False) -> None:
    """What execute and check share: check validates exactly what execute would run with."""
    p.add_argument("notebook", type=Path, nargs="?" if notebook_optional else None)
    p.add_argument("-o", "--output", type=Path, help="merged notebook (default: NAME.merged.ipynb)")
    p.add_argument("--site", default="local", help="where the apps run (default: local)")
    p.add_argument("--sites", type=Path, metavar="FILE", help="a sites file (default: nbpipe.toml "
                   "beside the notebook, then in the working directory, then pyproject.toml)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override a parameter; VALUE is parsed like papermill's -p")
    p.add_argument("-f", "--parameters-file", type=Path, action="append", default=[],
                   metavar="PARAMS.yaml", help="parameters from a YAML file")
    p.add_argument("--html", nargs="?", const=True, default=None, metavar="OUT.html",
                   help="also write an HTML report (default: beside the merged notebook)")
    p.add_argument("--no-input", action="store_true", help="the HTML report shows results only, no code")
    _split_option(p)


def _split_option(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--split", choices=("cells", "auto"), required=required,
                   help="split the notebook without tags: cells, every code cell its own app; auto, "
                        "cells grouped into apps from the dataflow (the notebook's app tags are ignored)")


def _engine_options(p: argparse.ArgumentParser) -> None:
    """What execute and verify share: how the apps run and where the cache is."""
    p.add_argument("--workers", type=int, help="how many apps run at once (default: cores)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR", help="the cache of app results (default: "
                   "$NBPIPE_CACHE_DIR, else the site's cache_dir, else .nbpipe-cache beside the notebook)")
    p.add_argument("--engine", choices=("ipython", "kernel"), default="ipython",
                   help="ipython: cells run in a forked, preloaded process (fast, the default); "
                        "kernel: a fresh Jupyter kernel per app (full isolation, any language)")
    p.add_argument("--debug", action="store_true",
                   help="run apps one by one in this process; show tracebacks")
    p.add_argument("--keep-run-dir", action="store_true",
                   help="keep the run directory (task notebooks, shipped values, logs)")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("-q", "--quiet", action="store_true",
                       help="print only warnings, errors and the line that says what was written")
    shown.add_argument("-v", "--verbose", action="store_true",
                       help="also show what the apps print, as they print it, each line prefixed with its app")


def parse_value(value: str) -> Any:
    """Parse a ``-p`` value the way papermill does: bool, None, int, float, else str.

    A word that is no finite number (``nan``, ``inf``, ``1e400``) stays a string:
    JSON, and so a parameter, has no literal for it.
    """
    if value in ("True", "False"):
        return value == "True"
    if value == "None":
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return value
    return number if math.isfinite(number) else value


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    """``-f`` files in order, then ``-p`` pairs; each name and value checked (nbpipe.validate),
    each remembered with where it was given, for the warning about a name the notebook lacks."""
    from .parameters import GivenParameters
    from .validate import check_parameters, read_parameters_file

    out = GivenParameters()
    for path in args.parameters_file:
        out.give(read_parameters_file(path), str(path))
    for name, value in args.parameter:
        shown = name if name.isprintable() else repr(name)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."  # its message stays one short line
        out.give(check_parameters({name: parse_value(value)}, origin=f"-p {shown}"), f"-p {shown}")
    return out


def _run_arguments(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Announce the run; return :func:`nbpipe.execute`'s arguments (execute and verify) but
    the view, and how many apps the run has."""
    from .api import cache_dir_for, load_pipeline
    from .sites import get_site

    _check_no_input(args)
    parameters = _parameters(args)
    site = get_site(args.site, notebook=args.notebook, sites_file=args.sites)
    # --split auto weighs cells by the durations in the cache this run uses (the site's, maybe)
    cache_dir = cache_dir_for(args.notebook.resolve().parent, site, args.cache_dir)
    pipeline = load_pipeline(args.notebook, args.split, cache_dir)
    _print_warnings(pipeline)
    if site.engine != "local" and not args.quiet:
        # Workers of a batch site may wait in a queue: say what is happening meanwhile.
        print(f"nbpipe: starting site {site.name!r} ({site.describe}) when an app needs it; "
              f"waiting for a first worker, up to {site.start_timeout:g} s",
              file=sys.stderr, flush=True)
    return dict(output=args.output, site=args.site, parameters=parameters, workers=args.workers,
                html=args.html, engine=args.engine, sites_file=args.sites, debug=args.debug,
                keep_run_dir=args.keep_run_dir, cache_dir=args.cache_dir, no_input=args.no_input,
                split=args.split), len(pipeline.apps)


def _check_no_input(args: argparse.Namespace) -> None:
    if args.no_input and args.html is None:
        raise UsageError("--no-input shapes the HTML report: add --html (or run nbpipe render --no-input)")


def _execute_arguments(args: argparse.Namespace, on_event: Any = None) -> dict[str, Any]:
    """:func:`nbpipe.execute`'s arguments from ``nbpipe execute``'s options, with ``on_event``
    watching the run (the %nbpipe magic's status view)."""
    arguments, _ = _run_arguments(args)
    return dict(cache=False if args.no_cache else None, refresh=args.refresh, pull=args.pull,
                on_event=on_event, **arguments)


@contextlib.contextmanager
def _viewed(args: argparse.Namespace, total: int) -> Iterator[dict[str, Any]]:
    """The progress view (nbpipe.progress) for the run, as ``execute``'s arguments; on a
    terminal a live region, which is stopped however the run ends (Ctrl-C, SIGTERM too)."""
    from .progress import view_for

    with view_for(total, quiet=args.quiet, plain=args.debug) as view:
        yield dict(on_event=view, on_output=view.watch if args.verbose else None)


def _execute(args: argparse.Namespace) -> int:
    from .api import execute

    if args.pull:
        raise UsageError("--pull puts the values into a Jupyter kernel's namespace: use it in the "
                         "%nbpipe execute magic (or nbpipe.execute(..., pull=True) in Python)")
    arguments, total = _run_arguments(args)
    with _viewed(args, total) as view:
        run = execute(args.notebook, cache=False if args.no_cache else None, refresh=args.refresh,
                      **arguments, **view)
    _report_run(run)
    if args.json:
        print(json.dumps(run.summary(), indent=1))
    return _run_status(run)


def _report_run(run: Any) -> None:
    cached = sum(1 for r in run.apps.values() if r.status.value == "cached")
    print(f"nbpipe: wrote {run.output}" + (f" and {run.html}" if run.html else "")
          + f" in {run.duration:.1f}s" + (f" ({cached} of {len(run.apps)} apps from the cache)" if cached else ""),
          file=sys.stderr)
    if run.run_dir:
        print(f"nbpipe: run directory kept in {run.run_dir}", file=sys.stderr)


def _run_status(run: Any) -> int:
    if not run.ok:
        bad = [f"{n} {r.status.value}" for n, r in run.apps.items() if not r.status.ok]
        print(f"nbpipe: not every app completed: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def _verify(args: argparse.Namespace) -> int:
    import tempfile

    from .api import verify

    with tempfile.TemporaryDirectory(prefix="nbpipe-verify-") as scratch:
        arguments, total = _run_arguments(args)
        if arguments["output"] is None:  # the fresh run's merged notebook is not kept unless asked for
            arguments["output"] = Path(scratch) / args.notebook.with_suffix(".verify.ipynb").name
        with _viewed(args, total) as view:
            checked = verify(args.notebook, **arguments, **view)
    for difference in checked.differences:
        which = f"app {difference.app}" + (f" item {difference.item}" if difference.item is not None else "")
        came = difference.cached_from.get("created") or "an earlier run"
        print(f"differs   {which}: cells {', '.join(difference.cells)} (cached from {came})")
    for what in checked.unverified:
        print(f"not cached {what}: nothing to compare with")
    if checked.differences:
        print(f"nbpipe: {len(checked.differences)} app(s) gave outputs that differ from the cache: "
              "an unseeded random generator, the clock, or an undeclared file", file=sys.stderr)
        return 1
    status = _run_status(checked.run)
    if status == 0 and not checked.compared:
        print("nbpipe: nothing in the cache to compare with: run `nbpipe execute` first", file=sys.stderr)
    elif status == 0:
        print(f"nbpipe: {len(checked.compared)} cached result(s) reproduced"
              + (f"; {len(checked.unverified)} had nothing cached" if checked.unverified else ""), file=sys.stderr)
    return status


def _cache(args: argparse.Namespace) -> int:
    from . import cachedir
    from .api import cache_dir_for

    from .sites import get_site

    notebook = args.notebook
    site = get_site(args.site, notebook=notebook, sites_file=args.sites) if args.site else None
    where = cache_dir_for(notebook.resolve().parent if notebook else Path.cwd(), site, args.cache_dir)
    if args.action == "list":
        found = cachedir.entries(where, notebook)
        for entry in found:
            meta = entry.meta
            which = str(meta.get("app")) + (f"[{meta['item']}]" if meta.get("item") is not None else
                                             ".split" if meta.get("split") else "")
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(meta.get("created", 0)))
            name = Path(str(meta.get("notebook"))).name
            print(f"{entry.key.split(':')[-1][:12]}  {name:<24} {which:<24} "
                  f"{cachedir.show_size(entry.size):>9}  stored {created}  ran {meta.get('duration', 0):.1f}s")
        total = sum(e.size for e in found)
        print(f"{len(found)} entries, {cachedir.show_size(total)} in {where}", file=sys.stderr)
        return 0
    if args.action == "clear":
        removed = cachedir.clear(where, notebook)
    else:
        removed = cachedir.prune(where, older_than=cachedir.parse_age(args.older_than) if args.older_than else None,
                                 max_size=cachedir.parse_size(args.max_size) if args.max_size else None)
    print(f"nbpipe: removed {removed.entries} entries ({cachedir.show_size(removed.bytes)}) from {where}",
          file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    from .api import check
    from .parameters import declared
    from .state import warnings_for

    _check_no_input(args)
    pipeline, _, checked = check(args.notebook, site=args.site, sites_file=args.sites,
                                 parameters=_parameters(args), output=args.output, html=args.html,
                                 split=args.split)
    _print_warnings(pipeline)
    params = declared(pipeline.parsed)
    if args.json:
        print(json.dumps(_check_json(pipeline, checked, params), indent=1))
        return 0
    print(_text_graph(pipeline, args.notebook))
    _print_split(pipeline)
    print(_text_parameters(pipeline, params, checked.parameters))
    images = {c.image: c for c in checked.containers.values()}
    if images:
        print("container images (checked):")
    for image, c in sorted(images.items()):
        apps = ", ".join(app for app, other in checked.containers.items() if other.image == image)
        print(f"  {image}: {c.digest} ({c.runtime}, Python {c.python}) for {apps}")
    for warning in warnings_for(pipeline):
        print(f"warning: {warning}")
    return 0


def _text_parameters(pipeline: Any, params: Any, given: dict[str, Any]) -> str:
    """One line per parameter, as in the cell: ``name: type = default  # help``, with
    ``-> value`` when one is given (papermill's ``--help-notebook``)."""
    if params is None:
        return f"parameters: not listed (the notebook is in {pipeline.parsed.language}, not Python)"
    if not pipeline.parsed.cells_of("parameters"):
        return "parameters: none (no cell is tagged 'parameters')"
    lines = ["parameters:" if params else "parameters: none (the parameters cell assigns nothing)"]
    for p in params:
        line = f"  {p.name}" + (f": {_printable(p.type)}" if p.type else "") + f" = {_printable(p.default)}"
        if p.name in given:
            line += f" -> {_printable(json.dumps(given[p.name]))}"
        lines.append(line + (f"  # {_printable(p.help)}" if p.help else ""))
    return "\n".join(lines)


def _printable(text: str, limit: int = 120) -> str:
    """Notebook text for a terminal line: control characters escaped, cut when long."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


def _check_json(pipeline: Any, checked: Any, params: Any) -> dict[str, Any]:
    """``nbpipe check --json``: the graph, the parameters and the warnings."""
    from .parameters import effective
    from .state import warnings_for

    values, sources = effective(pipeline.parsed, checked.parameters)
    return {
        **pipeline.to_json(),
        **_split_json(pipeline),
        "parameters": None if params is None else [p.to_dict() for p in params],
        "effective_parameters": values,
        "parameter_sources": sources,
        "containers": {app: c.describe() for app, c in checked.containers.items()},
        "warnings": [*pipeline.warnings, *(str(w) for w in checked.warnings), *warnings_for(pipeline)],
    }


def _print_warnings(pipeline: Any) -> None:
    for warning in pipeline.warnings:
        print(f"nbpipe: warning: {warning}", file=sys.stderr)


def _print_split(pipeline: Any) -> None:
    """Which apps a --split chose and why (nothing for a notebook run by its own tags)."""
    if pipeline.split is not None:
        print("\n".join(pipeline.split.explain()))


def _split_json(pipeline: Any) -> dict[str, Any]:
    """The ``split`` key of ``graph --format json`` and ``check --json`` (none without --split)."""
    split = pipeline.split
    return {"split": {**split.to_json(), "why": split.explain()}} if split is not None else {}


def _tag(args: argparse.Namespace) -> int:
    """``nbpipe tag``: a copy of the notebook with the tags its split uses (built as a run would
    build it, so ``nbpipe check`` accepts it)."""
    import nbformat

    from .api import load_pipeline
    from .atomic import write_text
    from .validate import output_paths

    pipeline = load_pipeline(args.notebook, args.split)
    _print_warnings(pipeline)
    output = args.output or args.notebook.with_name(args.notebook.name.removesuffix(".ipynb") + ".tagged.ipynb")
    output_paths(args.notebook, output, None)  # a directory, or a place it cannot write: one line, exit 2
    write_text(output, nbformat.writes(pipeline.split.nb) + "\n")
    print("\n".join(pipeline.split.explain()), file=sys.stderr)
    print(output)
    return 0


def _text_graph(pipeline: Any, path: Path) -> str:
    data = pipeline.to_json()
    lines = [f"{path}: {len(data['apps'])} app(s), {len(data['edges'])} edge(s); ok"]
    lines.append("apps, in run order:")
    for app in data["apps"]:
        cells = [pipeline.parsed.cells[i].index for i in pipeline.apps[app["name"]].spec.cells]
        reads = ", ".join(f"{n}<-{p}" for n, p in app["reads"].items()) or "-"
        opts = " ".join(f"{k}={v}" for k, v in app["options"].items())
        lines.append(f"  {app['name']}: cells {', '.join(map(str, cells))}; reads {reads}"
                     + (f"; {opts}" if opts else ""))
    lines.append("edges:")
    for e in data["edges"]:
        what = ", ".join(e["names"] + [f"file {f}" for f in e["files"]]
                         + (["after"] if "after" in e["kinds"] else []))
        lines.append(f"  {e['from']} -> {e['to']} ({what})")
    if not data["edges"]:
        lines.append("  (none: every app is independent)")
    return "\n".join(lines)


def _graph(args: argparse.Namespace) -> int:
    from .api import load_pipeline

    pipeline = load_pipeline(args.notebook, args.split)
    _print_warnings(pipeline)
    data = pipeline.to_json()
    if args.format == "json":
        print(json.dumps({**data, **_split_json(pipeline)}, indent=1))
    elif args.format == "text":
        print(_text_graph(pipeline, args.notebook))
        _print_split(pipeline)
    elif args.format == "mermaid":
        print(_mermaid(data))
    else:
        dot = _dot(data)
        if args.format == "dot":
            print(dot)
        else:
            import shutil
            import subprocess

            exe = shutil.which("dot")
            if exe is None:
                raise UsageError("--format svg needs Graphviz's 'dot' program on PATH "
                                 "(e.g. apt-get install graphviz); --format dot prints the source")
            print(subprocess.run([exe, "-Tsvg"], input=dot, capture_output=True, text=True,
                                 check=True).stdout)
    return 0


def _mermaid(data: dict[str, Any]) -> str:
    ids = _node_ids([app["name"] for app in data["apps"]])
    lines = ["flowchart TD"]
    for app in data["apps"]:
        lines.append(f'    {ids[app["name"]]}["{app["name"]}"]')
    for e in data["edges"]:
        label = _mermaid_text(", ".join(e["names"] + e["files"]))
        arrow = f"-->|{label}|" if label else "-.->"
        lines.append(f"    {ids[e['from']]} {arrow} {ids[e['to']]}")
    return "\n".join(lines)


def _mermaid_text(text: str) -> str:
    """Text of an edge label: Mermaid's entity codes for what would end or break it."""
    for char, code in (("#", "#35;"), ('"', "#quot;"), ("|", "#124;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(char, code)
    return text


#: words Mermaid's flowchart grammar takes for itself, so no node id
_MERMAID_WORDS = frozenset({"end", "graph", "subgraph", "flowchart", "direction", "style", "class",
                            "classdef", "click", "linkstyle", "call", "href", "default"})


def _node_id(name: str) -> str:
    return name if name.isidentifier() and name.lower() not in _MERMAID_WORDS else ""


def _node_ids(names: list[str]) -> dict[str, str]:
    """App name -> a distinct Mermaid node id: the name itself where it can be one;
    else the name with ``-`` as ``_`` and a number added if that is taken
    (``my-app`` and ``my_app`` stay two nodes; ``end`` is a Mermaid keyword)."""
    ids = {name: _node_id(name) for name in names if _node_id(name)}
    taken = set(ids.values())
    for name in names:
        if name in ids:
            continue
        base = name.replace("-", "_") + ("_" if name.lower() in _MERMAID_WORDS else "")
        candidate, n = base, 1
        while candidate in taken or candidate.lower() in _MERMAID_WORDS:
            n += 1
            candidate = f"{base}_{n}"
        ids[name] = candidate
        taken.add(candidate)
    return ids


def _dot(data: dict[str, Any]) -> str:
    lines = ["digraph nbpipe {", "    rankdir=TB;", "    node [shape=box, style=rounded];"]
    for app in data["apps"]:
        lines.append(f'    "{app["name"]}";')
    for e in data["edges"]:
        label = _dot_text(", ".join(e["names"] + e["files"]))
        style = ' [style=dashed]' if not label else f' [label="{label}"]'
        lines.append(f'    "{e["from"]}" -> "{e["to"]}"{style};')
    lines.append("}")
    return "\n".join(lines)


def _dot_text(text: str) -> str:
    """Text inside a DOT double-quoted string (file names may hold quotes and backslashes)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _compile(args: argparse.Namespace) -> int:
    from .api import load_pipeline
    from .compile import write_compiled

    pipeline = load_pipeline(args.notebook, args.split)
    _print_warnings(pipeline)
    paths = write_compiled(pipeline, args.directory)
    for path in paths.values():
        print(path)
    print(args.directory / "graph.json")
    return 0


def _render(args: argparse.Namespace) -> int:
    from .parse import read_notebook
    from .render import render_html

    output = args.output or args.notebook.with_suffix(".html")
    render_html(read_notebook(args.notebook), output, no_input=args.no_input,
                name=args.notebook.stem.removesuffix(".merged"), beside=args.notebook.parent)
    print(output)
    return 0


def _sites(args: argparse.Namespace) -> int:
    from .sites import known_sites

    sites = known_sites(args.notebook, args.sites)
    width = max(len(name) for name in sites)
    for site in sites.values():
        print(f"{site.name:<{width}}  engine={site.engine:<6} {site.describe:<42} "
              f"defined in {site.defined_in}")
    return 0

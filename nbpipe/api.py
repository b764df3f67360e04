"""The Python API: run a tagged notebook as a pipeline and merge the result.

``nbpipe.execute(path, site=..., parameters=...)`` is what ``nbpipe execute``
calls; it also works from inside a running Jupyter kernel, since every task
runs in processes of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nbformat

from . import stop
from .atomic import write_text
from .cache import Keys, input_digests, provenance
from .compile import compile_pipeline
from .containers import Container
from .containers import remove_run_containers
from .containers import resolve as resolve_containers
from .errors import OutputError, UsageError, WorkerError
from .events import Event
from .execution.base import AppResult, AppStatus, TaskSpec, run_ok
from .execution.scheduler import schedule
from .graph import Pipeline, build_pipeline
from .memo import CacheMemo, Difference, Policy
from .itemsfile import ItemsFile, items_path
from .merge import merge
from .parse import parse_notebook, read_notebook
from .pull import collect as collect_pulled
from .pull import into_namespace
from .pull import plan as pull_plan
from .pull import warn
from .sites import Site, get_site
from .split import Split, cell_durations, restore_tags, split_notebook
from .store import CACHE_DIR_NAME, Store
from .validate import Checked, before_run, check_refresh, default_output

__all__ = ["ENGINES", "AppStatus", "RunResult", "VerifyResult", "cache_dir_for", "check", "default_output",
           "execute", "load_pipeline", "verify"]

#: How a task notebook is executed: "ipython" runs its cells in an in-process
#: IPython shell of a process forked for the app; "kernel" starts a fresh
#: Jupyter kernel per app (full isolation, any kernel language).
ENGINES = ("ipython", "kernel")


@dataclass(repr=False)
class RunResult:
    """What :func:`execute` returns. In Jupyter it shows as a summary table
    (``_repr_html_``); its ``repr`` is one line."""

    notebook: Any  # the merged nbformat.NotebookNode
    output: Path
    apps: dict[str, AppResult]
    duration: float
    html: Path | None = None
    run_dir: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    #: seconds from the start of the run until the first app completed
    first_result: float | None = None
    #: ``pull=True``: the final value of every name the notebook's apps define
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return run_ok(self.apps)

    def __repr__(self) -> str:
        status = "completed" if self.ok else "failed"
        return f"<RunResult {status} {len(self.apps)} apps in {self.duration:.1f}s -> {self.output.name}>"

    def _repr_html_(self) -> str:
        from .status import run_html

        return run_html(self)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (``nbpipe execute --json``)."""
        return {
            "status": "completed" if self.ok else "failed",
            "output": str(self.output),
            "html": str(self.html) if self.html else None,
            "duration": round(self.duration, 3),
            "first_result": round(self.first_result, 3) if self.first_result is not None else None,
            "apps": {name: r.to_dict() for name, r in self.apps.items()},
            "metrics": self.metrics,
        }


def load_pipeline(path: str | Path, split: str | None = None, cache_dir: str | Path | None = None) -> Pipeline:
    """Read, parse and analyse a notebook; raise on bad tags or a bad graph.

    ``split`` (``"cells"`` or ``"auto"``) tags the notebook's cells first
    (:mod:`nbpipe.split`); ``auto`` weighs cells by the durations recorded in
    the cache (``cache_dir``, else where :func:`cache_dir_for` finds it).
    """
    nb = read_notebook(path)
    if split is None:
        return build_pipeline(parse_notebook(nb, path))
    where = cache_dir_for(Path(path).resolve().parent, None, cache_dir)
    durations = Store.of_cache(where).durations() if split == "auto" else {}
    chosen = _split(nb, split, Path(path), durations)
    pipeline = build_pipeline(parse_notebook(chosen.nb, path))
    said = chosen.warning()
    return replace(pipeline, split=chosen, warnings=((said,) if said else ()) + pipeline.warnings)


_SPLITS: dict[tuple[Any, ...], Split] = {}


def _split(nb: Any, mode: str, path: Path, durations: dict[str, float]) -> Split:
    """:func:`~nbpipe.split.split_notebook`, once per notebook content, mode and durations in
    a process (a run loads its pipeline more than once: the CLI's count, the check, the run)."""
    key = (str(path.resolve()), json.dumps(nb, sort_keys=True, default=str), mode,
           tuple(sorted(durations.items())))
    if key not in _SPLITS:
        if len(_SPLITS) >= 4:
            _SPLITS.pop(next(iter(_SPLITS)))
        _SPLITS[key] = split_notebook(nb, mode, path, durations)
    return _SPLITS[key]


def check(
    path: str | Path,
    *,
    site: str = "local",
    sites_file: str | Path | None = None,
    parameters: dict[str, Any] | None = None,
    output: str | Path | None = None,
    html: str | Path | bool | None = None,
    split: str | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Pipeline, Site, Checked]:
    """Every check :func:`execute` makes before anything runs; ``nbpipe check`` runs it too.
    The last one starts each container image once, to see that it can run apps.

    What is allowed but likely a mistake (a parameter the notebook does not set)
    is given as a Python warning (:class:`~nbpipe.errors.NbpipeWarning`) and kept
    in ``Checked.warnings``.
    """
    path = Path(path)
    chosen = get_site(site, notebook=path, sites_file=Path(sites_file) if sites_file else None)
    pipeline = load_pipeline(path, split, cache_dir_for(path.resolve().parent, chosen, cache_dir))
    chosen.check(pipeline)
    checked = before_run(pipeline, path, parameters=parameters, output=output, html=html)
    for warning in checked.warnings:
        warnings.warn(warning, stacklevel=_caller_level())
    return pipeline, chosen, replace(checked, containers=resolve_containers(pipeline, chosen,
                                                                            path.resolve().parent))


def _caller_level() -> int:
    """The ``stacklevel`` at which a warning names the first caller outside nbpipe: the
    line of the script or notebook cell that passed the parameter, not nbpipe's own."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def execute(
    path: str | Path,
    *,
    output: str | Path | None = None,
    site: str = "local",
    parameters: dict[str, Any] | None = None,
    workers: int | None = None,
    html: str | Path | bool | None = None,
    engine: str = "ipython",
    sites_file: str | Path | None = None,
    debug: bool = False,
    keep_run_dir: bool = False,
    on_event: Callable[[Event], None] | None = None,
    cache: bool | None = None,
    refresh: tuple[str, ...] | list[str] = (),
    cache_dir: str | Path | None = None,
    pull: bool = False,
    no_input: bool = False,
    on_output: Callable[[Path], None] | None = None,
    split: str | None = None,
) -> RunResult:
    """Run the tagged notebook at ``path`` on ``site`` and write the merged notebook
    (and, with ``html``, the report; ``no_input``: the report shows results only).

    Apps whose key is in the cache are restored, not run (``cache=False``:
    run everything and store nothing; None: the cache is used unless the
    environment has ``NBPIPE_CACHE=off``; ``refresh``: these apps and what
    depends on them run whatever the cache holds). Returns a :class:`RunResult`
    whether or not every app completed (check ``.ok``). Raises
    :class:`~nbpipe.errors.NbpipeError` subclasses for bad input, before
    anything runs. On KeyboardInterrupt the partial merged notebook is written,
    no task process is left, and the interrupt re-raised with the
    :class:`RunResult` as ``exc.run_result``. ``on_event`` is called with a
    frozen :class:`~nbpipe.events.Event` each time an app or a map item
    changes state (in the thread that called ``execute``); without one, in a
    Jupyter kernel the cell shows a live status view (:mod:`nbpipe.status`).
    With ``on_output``, each task appends what its cells print, as they print
    it, to its log in the run directory (:meth:`~nbpipe.store.Store.output_log`),
    and ``on_output`` is called with the run directory before any app runs, so
    that a view can show the logs live (:class:`nbpipe.tail.OutputTail`; the
    CLI's ``-v``). ``pull=True``: the final value of every name the apps
    define (as a serial run ends with them) is in ``RunResult.values`` and,
    when called in IPython, in its user namespace. ``split``: ``"cells"`` runs
    every code cell as its own app, ``"auto"`` groups the cells into apps from
    the dataflow (:mod:`nbpipe.split`); the notebook's own app tags are ignored.
    """
    view = _status_view(path, split) if on_event is None else None
    with view or contextlib.nullcontext():
        run, _ = _execute(path, output=output, site=site, parameters=parameters, workers=workers, html=html,
                          engine=engine, sites_file=sites_file, debug=debug, keep_run_dir=keep_run_dir,
                          on_event=on_event or view, on_output=on_output, cache_dir=cache_dir, refresh=refresh,
                          no_input=no_input, policy=Policy(read=_use_cache(cache), write=_use_cache(cache)),
                          pull=pull, split=split)
        if view is not None:
            view.board.ok = run.ok
    if pull and _inside_ipython():
        from IPython import get_ipython

        into_namespace(run.values, get_ipython().user_ns)
    return run


def _status_view(path: str | Path, split: str | None = None) -> Any:
    """A live status view when this runs in a Jupyter kernel (not a terminal IPython), else None."""
    if not _inside_ipython():
        return None
    from IPython import get_ipython

    if getattr(get_ipython(), "kernel", None) is None:
        return None
    from .status import LiveView

    return LiveView(load_pipeline(path, split))


def _use_cache(cache: bool | None) -> bool:
    if cache is None:
        return os.environ.get("NBPIPE_CACHE", "on").strip().lower() not in ("off", "0", "no", "false")
    return cache


@dataclass
class VerifyResult:
    """What :func:`verify` returns: the fresh run and the apps whose outputs differ from the cache."""

    run: RunResult
    differences: list[Difference]
    #: apps (items) that completed with nothing in the cache to compare with
    unverified: list[str]
    #: apps (items) compared with their cached result
    compared: list[str]

    @property
    def ok(self) -> bool:
        return self.run.ok and not self.differences


def verify(path: str | Path, **options: Any) -> VerifyResult:
    """Re-run every app ignoring the cache and compare its outputs with the cached ones
    (timings and addresses aside). Takes :func:`execute`'s options; the cache is read
    for comparison only and left as it was."""
    options.pop("cache", None)
    options.pop("refresh", None)
    run, memo = _execute(path, policy=Policy(read=False, write=False, verify=True), **options)
    return VerifyResult(run, memo.differences, memo.unverified, memo.compared)


@stop.handling
def _execute(path: str | Path, *, output: str | Path | None = None, site: str = "local",
             parameters: dict[str, Any] | None = None, workers: int | None = None,
             html: str | Path | bool | None = None, engine: str = "ipython",
             sites_file: str | Path | None = None, debug: bool = False, keep_run_dir: bool = False,
             on_event: Callable[[Event], None] | None = None, on_output: Callable[[Path], None] | None = None,
             cache_dir: str | Path | None = None, refresh: tuple[str, ...] | list[str] = (),
             policy: Policy = Policy(), pull: bool = False, no_input: bool = False,
             split: str | None = None) -> tuple[RunResult, CacheMemo]:
    started = time.time()
    path = Path(path)
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    pipeline, chosen, checked = check(path, site=site, sites_file=sites_file, parameters=parameters,
                                      output=output, html=html, split=split, cache_dir=cache_dir)
    parameters, output = checked.parameters, checked.output
    policy = Policy(policy.read, policy.write, check_refresh(pipeline, refresh), policy.verify)
    cwd = path.resolve().parent
    engine = _engine_for(pipeline, engine, debug)
    if debug and checked.containers:
        print(f"nbpipe: warning: --debug runs every app in this process, so {', '.join(sorted(checked.containers))} "
              "run on this machine, not in their container", file=sys.stderr, flush=True)
    where = cache_dir_for(path.resolve().parent, chosen, cache_dir)
    if policy.read or policy.write or policy.verify:
        _check_cache_dir(where)
    pulled = pull_plan(pipeline) if pull else {}
    store, compiled = _make_run_dir(pipeline, chosen.run_root(cwd), where, pulled)
    images = {app: c.digest for app, c in checked.containers.items()}
    keys = Keys(pipeline, compiled, parameters, cwd, images)
    keys.warm()
    memo = CacheMemo(pipeline, store, keys, policy, {"id": _run_id(started), "notebook": str(path.resolve())})
    executor = _LazyExecutor(lambda: _start_executor(chosen, pipeline, store.run_dir, cwd, workers=workers,
                                                     engine=engine, debug=debug), store.run_dir)
    make_spec = _spec_maker(pipeline, store, cwd, parameters, engine, checked.containers,
                            verbose=on_output is not None)

    def map_size(app: str) -> list[str]:
        return list(json.loads(store.split_count(app).read_text())["labels"])

    interrupt: KeyboardInterrupt | None = None
    try:
        if on_output is not None:
            on_output(store.run_dir)
        results = schedule(pipeline, executor, make_spec, on_event, map_size, memo=memo)
    except KeyboardInterrupt as exc:
        # A signal that came before the scheduler had results to attach leaves none.
        interrupt, results = exc, getattr(exc, "results", None) or _stopped_results(pipeline)
    finally:
        with stop.shielded():
            executor.shutdown(cancel=True)
            remove_run_containers(checked.containers.values(), store.run_dir.name)
    stop.hold()  # from here on a signal is recorded, not raised: the merged notebook gets written
    merged, metrics = _merge_run(pipeline, results, store, path, parameters, chosen.name, started, memo,
                                 {app: c.describe() for app, c in checked.containers.items()}, output)
    if policy.write:
        store.record_durations(cell_durations(merged))
    _write_results(merged, output, checked.html, store.run_dir, no_input=no_input, name=path.stem)
    values, warnings = collect_pulled(pulled, results, store)
    warn(warnings)
    if not keep_run_dir:
        shutil.rmtree(store.run_dir, ignore_errors=True)
    ends = [r.end_time for r in results.values() if r.status.ok and r.end_time]
    run = RunResult(merged, output, results, time.time() - started, checked.html,
                    store.run_dir if keep_run_dir else None, metrics,
                    min(ends) - started if ends else None, values)
    if interrupt is None and stop.requested():
        interrupt = stop.Stopped(stop.requested())
    if interrupt is not None:
        interrupt.run_result = run  # type: ignore[attr-defined]
        raise interrupt
    return run, memo


def cache_dir_for(directory: Path, site: Site | None = None, given: str | Path | None = None) -> Path:
    """Where the cache of a notebook in ``directory`` lives: ``given`` (``--cache-dir``), else
    ``NBPIPE_CACHE_DIR``, else the site's ``cache_dir``, else ``.nbpipe-cache`` in ``directory``."""
    if given is not None:
        return Path(given).expanduser()
    if os.environ.get("NBPIPE_CACHE_DIR"):
        return Path(os.environ["NBPIPE_CACHE_DIR"]).expanduser()
    if site is not None and site.options.get("cache_dir"):
        base = site.base_dir or directory
        return base / os.path.expanduser(str(site.options["cache_dir"]))
    return directory / CACHE_DIR_NAME


def _check_cache_dir(where: Path) -> None:
    """A cache directory that cannot be a directory (it, or a folder above it, is a
    file) is a mistake to say before the run; one that cannot be written only warns."""
    for path in (where, *where.parents):
        if path.exists():
            if not path.is_dir():
                raise UsageError(f"the cache directory {where} cannot be used: {path} is a file; "
                                 "give --cache-dir (or NBPIPE_CACHE_DIR) a directory, or pass --no-cache")
            return


class _LazyExecutor:
    """The site's executor, started when the first task is submitted: a run whose
    apps all come from the cache starts no worker.

    A batch site's executor checks its first worker (``ready``) after the first
    task is on its way: the check and the task travel together, not one after
    the other.
    """

    def __init__(self, start: Callable[[], Any], run_dir: Path) -> None:
        self._start, self._executor, self._run_dir = start, None, run_dir

    @property
    def workers(self) -> int:
        return self._get()[0].workers

    def _get(self, first: TaskSpec | None = None) -> tuple[Any, Any]:
        """The executor and, when this call started it, the future of ``first``."""
        if self._executor is not None:
            return self._executor, None
        with _site_failure(self._run_dir):
            executor = self._start()
            try:
                future = executor.submit(first) if first is not None else None
                if hasattr(executor, "ready"):
                    executor.ready()
            except BaseException:
                executor.shutdown()
                raise
        self._executor = executor
        return executor, future

    def submit(self, spec: TaskSpec) -> Any:
        executor, future = self._get(spec)
        return future if future is not None else executor.submit(spec)

    def shutdown(self, *, cancel: bool = False) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel=cancel)


def _engine_for(pipeline: Pipeline, engine: str, debug: bool) -> str:
    if engine == "ipython" and (pipeline.parsed.language != "python" or not hasattr(os, "fork")):
        return "kernel"  # the in-process engine runs Python by forking
    if debug and engine == "ipython" and _inside_ipython():
        return "kernel"  # --debug runs apps in this process, which has a shell of its own
    return engine


def _make_run_dir(pipeline: Pipeline, run_root: Path | None, cache_dir: Path,
                  pull: dict[str, list[str]] | None = None) -> tuple[Store, dict[str, Any]]:
    """A private run directory (mode 0700: shipped values stay private) holding the task
    notebooks, as a :class:`~nbpipe.store.Store` with the cache; and the task notebooks.

    Removed again if anything, a signal too, stops the run before it starts.
    """
    if run_root is not None:
        run_root.mkdir(parents=True, exist_ok=True)
    with stop.shielded():
        run_dir = Path(tempfile.mkdtemp(prefix="nbpipe-run-", dir=run_root))
    try:
        if stop.requested():
            raise stop.Stopped(stop.requested())
        store = Store(run_dir, cache_dir)
        store.tasks.mkdir()
        compiled = compile_pipeline(pipeline, pull or {})
        for name, nb in compiled.items():
            nbformat.write(nb, store.tasks / f"{name}.ipynb")
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return store, compiled


def _start_executor(chosen: Site, pipeline: Pipeline, run_dir: Path, cwd: Path, *, workers: int | None,
                    engine: str, debug: bool) -> Any:
    return chosen.executor(workers, engine=engine, preload=_notebook_imports(pipeline, cwd),
                           run_dir=run_dir, kernel_name=pipeline.parsed.kernel_name, debug=debug)


@contextlib.contextmanager
def _site_failure(run_dir: Path) -> Iterator[None]:
    """A site whose workers fail to start: the run directory goes (Parsl's logs stay: they say why)."""
    try:
        yield
    except WorkerError as exc:
        logs = Store(run_dir).parsl_logs
        if not logs.exists():
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        raise WorkerError(f"{exc}; Parsl's logs are in {logs}") from None
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _spec_maker(pipeline: Pipeline, store: Store, cwd: Path, parameters: dict[str, Any],
                engine: str, containers: dict[str, Container] | None = None,
                verbose: bool = False) -> Callable[..., TaskSpec]:
    """What the scheduler calls to describe one task (an app, a map item or a split)."""
    containers = containers or {}

    def make_spec(app: str, attempt: int, *, item: int | None = None, split: bool = False,
                  maps: dict[str, int], sources: dict[str, str], watch: list[str]) -> TaskSpec:
        spec = pipeline.apps[app].spec
        limits = [t for t in (spec.timeout, spec.resources.walltime) if t]
        return TaskSpec(
            app=app,
            notebook=str(store.task_notebook(app, split)),
            output=str(store.executed(app, item, split)),
            run_dir=str(store.run_dir),
            cwd=str(cwd),
            parameters=parameters,
            kernel_name=pipeline.parsed.kernel_name,
            timeout=min(limits) if limits else None,
            attempt=attempt,
            outputs=[] if split else list(spec.outputs),
            engine=engine,
            item=item,
            split=split,
            maps={k: v for k, v in maps.items() if k in pipeline.apps[app].reads.values()},
            executor=spec.executor,
            sources=sources,
            watch=watch,
            container=containers[app].to_dict() if app in containers else None,
            verbose=verbose,
        )

    return make_spec


def _merge_run(pipeline: Pipeline, results: dict[str, AppResult], store: Store, path: Path,
               parameters: dict[str, Any], site: str, started: float,
               memo: CacheMemo, containers: dict[str, dict[str, Any]],
               output: Path) -> tuple[Any, dict[str, Any]]:
    """The executed task notebooks (partial ones too) -> the merged notebook, and the metrics.

    A map app's item notebooks are read one at a time as the merge asks (it keeps what it
    shows); the items of a large map go to the items file beside ``output``, put in place
    before the merged notebook is written.
    """
    _pick_up_partial(results, store)
    executed: dict[str, Any] = {}
    for app, result in results.items():
        if result.items is not None:
            executed[app] = (_read_executed(r.output) for r in result.items)
        elif result.output:
            executed[app] = _read_executed(result.output)
    metrics = _read_metrics(store, pipeline)
    cwd = path.resolve().parent
    inputs = input_digests(pipeline, cwd)
    extra = {
        "metrics": metrics,
        "run": {"id": memo.run["id"], "started": _iso(started)},
        "cache_keys": dict(memo.own),
        "cache": {"dir": str(store.cache_dir), "read": memo.policy.read, "write": memo.policy.write,
                  "refresh": sorted(memo.policy.refresh)},
        "provenance": {**provenance(path, inputs),
                       **({"containers": {c["image"]: c["digest"] for c in containers.values()}}
                          if containers else {})},
        "duration": round(time.time() - started, 3),
    }
    if pipeline.split is not None:
        extra["split"] = pipeline.split.to_json()
    items = ItemsFile(items_path(output))
    try:
        merged = merge(pipeline, results, executed, parameters=parameters, site=site, extra=extra,
                       containers=containers, items_file=items)
        items.commit()
    except OutputError as exc:
        items.abort()
        raise OutputError(f"{exc}; the executed task notebooks are kept in {store.run_dir}") from None
    except BaseException:
        items.abort()
        raise
    if pipeline.split is not None:
        restore_tags(merged, pipeline.split)
    return merged, metrics


def _write_results(merged: Any, output: Path, html: Path | None, run_dir: Path, *, no_input: bool = False,
                   name: str | None = None) -> None:
    """The merged notebook, then the report, each whole or not at all (:mod:`.atomic`).

    The paths were checked before the run; if writing still fails (a full disk,
    a directory an app removed), the run directory is kept: its task notebooks
    hold every app's output.
    """
    try:
        write_text(output, nbformat.writes(merged) + "\n")  # ends as nbformat.write ends it
        if html is not None:
            from .render import render_html

            render_html(merged, html, no_input=no_input, name=name, beside=output.parent)
    except OSError as exc:
        where = exc.filename or output
        raise OutputError(f"cannot write {where}: {exc.strerror}; the executed task notebooks "
                          f"are kept in {run_dir}") from None


def _stopped_results(pipeline: Pipeline) -> dict[str, AppResult]:
    return {name: AppResult(name, status=AppStatus.SKIPPED, reason="the run was interrupted")
            for name in pipeline.order}


def _pick_up_partial(results: dict[str, AppResult], store: Store) -> None:
    """An app stopped part-way saved what it printed so far: show it in the merge."""
    for app, result in results.items():
        if result.status.ok or result.stopped_by:
            continue  # an app serial execution never reached (SystemExit above it) shows nothing
        if result.items is None and not result.output and store.executed(app).exists():
            result.output = str(store.executed(app))
        for item in result.items or []:
            partial = store.executed(app, item.index)
            if not item.output and partial.exists():
                item.output = str(partial)


def _inside_ipython() -> bool:
    import sys

    shell_module = sys.modules.get("IPython.core.interactiveshell")
    return bool(shell_module and shell_module.InteractiveShell.initialized())


def _read_executed(path: str | None) -> Any:
    """An executed task notebook as plain JSON, or None. Not validated here: the merged
    notebook is; the merge makes notebook nodes of the cells it takes (a task notebook's
    own load and save cells, most of it, are never converted)."""
    if not path or not Path(path).exists():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, OSError):
        # Torn: the task was killed while papermill rewrote it (a second Ctrl-C). The app
        # is failed or interrupted already; its cells show that, without outputs.
        return None


def _notebook_imports(pipeline: Pipeline, cwd: Path) -> tuple[str, ...]:
    """Modules the notebook may load anywhere (each app's, as the graph found them): the
    worker preloads them once for every app.

    Modules of the notebook's own directory are left out: a cell may write
    them (``%%writefile``), and each app must import what is on disk then.
    """
    modules = dict.fromkeys(m for name in pipeline.order for m in pipeline.apps[name].modules)
    local = {p.stem for p in cwd.glob("*.py")} | {p.name for p in cwd.iterdir() if (p / "__init__.py").exists()}
    return tuple(m for m in modules if m.split(".")[0] not in local)


def _read_metrics(store: Store, pipeline: Pipeline) -> dict[str, Any]:
    """The metrics every app recorded (restored ones too), in the notebook's order."""
    metrics: dict[str, Any] = {}
    for app in pipeline.order:
        path = store.metrics(app)
        if path.exists():
            metrics.update(json.loads(path.read_text()))
    return metrics


def _run_id(started: float) -> str:
    """A run's name in the cache's records: when it started, and a few random digits."""
    import secrets

    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + "-" + secrets.token_hex(3)


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


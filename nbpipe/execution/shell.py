"""An in-process IPython shell that behaves like ipykernel's, and records outputs.

The shell is ipykernel's own :class:`~ipykernel.zmqshell.ZMQInteractiveShell`
with the ZeroMQ transport replaced by a recorder, so everything that does not
touch the wire is ipykernel's code: the kernel magics and environment
(``PAGER=cat``, ...), pager output going to a payload that notebooks never
show (``%prun``, ``len?``), cells compiled to ipykernel's temp file names
(which warnings and tracebacks print), ``!cmd`` through pipes, ``%matplotlib
inline`` with the inline backend, and the ``__main__`` namespace. What a
kernel does around each cell (``input()`` refused as nbclient refuses it,
display and clear messages, errors) is done by :func:`run_cell`.
"""

from __future__ import annotations

import builtins
import copy
import getpass
import io
import os
import sys
import time
from typing import Any

from nbformat import NotebookNode

__all__ = ["is_engine_shell", "make_shell", "mark_display", "mark_kernel_displays", "new_task", "reset",
           "run_cell"]

_shell: Any = None


class _NoKernel:
    """What the shell asks of its kernel: ipykernel's GUI integration records
    the event loop it selects here (``inline`` selects none)."""

    eventloop = None


def make_shell() -> Any:
    """Create (once per process) the shell that cells run in, set up like ipykernel's."""
    global _shell
    if _shell is not None:
        return _shell
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.error import UsageError
    from ipykernel.compiler import XCachingCompiler
    from ipykernel import zmqshell
    from traitlets import Type
    from traitlets.config import Config

    class Publisher(DisplayPublisher):
        def publish(self, data: Any, metadata: Any = None, source: Any = None, *,
                    transient: Any = None, update: bool = False, **kwargs: Any) -> None:
            _recorder.display(data, metadata or {}, transient or {}, update)

        def clear_output(self, wait: bool = False) -> None:
            _recorder.clear(wait)

    class Hook(DisplayHook):
        def start_displayhook(self) -> None:
            pass

        def write_output_prompt(self) -> None:
            pass

        def write_format_data(self, format_dict: Any, md_dict: Any = None) -> None:
            _recorder.result(format_dict, md_dict or {}, self.prompt_count)

        def finish_displayhook(self) -> None:
            sys.stdout.flush()
            sys.stderr.flush()

    # Named as ipykernel's class: libraries tell a notebook from a terminal with
    # ``get_ipython().__class__.__name__ == "ZMQInteractiveShell"``.
    class ZMQInteractiveShell(zmqshell.ZMQInteractiveShell):  # type: ignore[misc]
        displayhook_class = Type(Hook)
        display_pub_class = Type(Publisher)

        def enable_gui(self, gui: Any = None) -> None:
            from ipykernel.eventloops import enable_gui

            try:
                enable_gui(gui, kernel=self.kernel)
            except ValueError as exc:
                raise UsageError(str(exc)) from exc
            self.active_eventloop = gui

        def _showtraceback(self, etype: Any, evalue: Any, stb: Any) -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            _recorder.error(str(etype.__name__), str(evalue), list(stb))
            self._last_traceback = stb

    config = Config()
    config.HistoryManager.enabled = False  # no history thread: this process forks
    # ipykernel's kernel app selects the inline backend the same way.
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    shell = ZMQInteractiveShell.instance(config=config, kernel=_NoKernel(), compiler_class=XCachingCompiler)
    _cache_transforms(shell.input_transformer_manager)
    _shell = shell
    return shell


def _cache_transforms(manager: Any) -> None:
    """Transform each cell's text once. IPython's input transforms (magics, ``!cmd``,
    ``?``) depend on the text and the transformers alone, and a batch's items run
    the same cells: a fifth of a short cell's time. (The namespace-dependent step,
    prefilter of one-line cells, comes after and is not cached.)"""
    transform = manager.transform_cell
    cache: dict[tuple[Any, ...], str] = {}

    def cached(cell: str) -> str:
        key = (cell, tuple(map(id, manager.cleanup_transforms + manager.line_transforms
                                + manager.token_transformers)))
        if key not in cache:
            if len(cache) >= 4096:
                cache.clear()
            cache[key] = transform(cell)
        return cache[key]

    manager.transform_cell = cached


def _new_output(output_type: str, **fields: Any) -> Any:
    """``nbformat.v4.new_output`` with every field given, without its schema check
    (which cost as much as running a short cell); the outputs are built from what
    IPython's display machinery produced."""
    return NotebookNode(output_type=output_type, **fields)


#: Set in a forked app (:mod:`.zygote`): printed text also goes to the task's
#: log, so an app that crashes hard (``os._exit``, a segfault) is reported
#: with what it printed.
echo = False


class _Stream(io.TextIOBase):
    """sys.stdout / sys.stderr during a cell: text becomes ``stream`` outputs."""

    def __init__(self, name: str, real: Any) -> None:
        self.name_ = name
        self.real = real

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return int(self.real.fileno())

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            _recorder.stream(self.name_, text)
            if echo:
                self.real.write(text)
        return len(text)

    def flush(self) -> None:
        _recorder.flush(self.name_)

    def close(self) -> None:
        """Nothing to close. (io's finalizer closes, and closing flushes: a stream of
        an earlier cell collected in the middle of a later one would send the later
        cell's text early, out of ipykernel's order.)"""


class _Recorder:
    """Collects the outputs of the cell being executed, in order.

    Stream text is buffered as ipykernel buffers it: a stream is sent when
    flushed (``print(..., flush=True)``, a logging handler), before a display,
    result or error, :data:`FLUSH_INTERVAL` seconds after its first unsent
    write, and when the cell ends (stdout first). So a short cell's ``print``
    comes after a logged line but before a warning, as in a notebook.

    Text is kept as a list of pieces and joined once (when the stream is sent,
    and when its output is complete), so printing costs time linear in what is
    printed, however often it is flushed.
    """

    #: ipykernel's ``OutStream.flush_interval``
    FLUSH_INTERVAL = 0.2

    def __init__(self) -> None:
        self.outputs: list[Any] = []
        self.clear_pending = False
        #: display id -> the outputs that show it, across the cells of one task
        self.displays: dict[str, list[Any]] = {}
        #: whether outputs carry their display id for the merge (in a task notebook)
        self.mark_displays = False
        #: stream name -> [unsent pieces of text, time of the first]
        self.pending: dict[str, list[Any]] = {}
        #: the last output, a stream still growing, and the pieces of its text
        self.tail: tuple[Any, list[str]] | None = None
        #: stream name -> a file that gets its text as it is written (papermill's stdout_file)
        self.tee: dict[str, Any] = {}

    def _append(self, output: Any) -> None:
        self.sync()
        if self.clear_pending:
            self.outputs.clear()
            self.clear_pending = False
        self.outputs.append(output)

    def sync(self) -> None:
        """Give the growing stream output its whole text (before anyone reads it)."""
        if self.tail is not None:
            output, pieces = self.tail
            if len(pieces) > 1:
                pieces[:] = ["".join(pieces)]
                output.text = pieces[0]

    def stream(self, name: str, text: str) -> None:
        tee = self.tee.get(name)
        if tee is not None:
            tee.write(text)
            tee.flush()
        self._flush_due()
        self.pending.setdefault(name, [[], time.monotonic()])[0].append(text)

    def _flush_due(self) -> None:
        if not self.pending:
            return
        now = time.monotonic()
        due = sorted((t, n) for n, (_, t) in self.pending.items() if now - t >= self.FLUSH_INTERVAL)
        for _, name in due:
            self.flush(name)

    def flush_all(self) -> None:
        self._flush_due()
        for name in ("stdout", "stderr"):
            self.flush(name)
        self.sync()

    def flush(self, name: str) -> None:
        """Send the buffered text of stream ``name`` as a ``stream`` output."""
        pieces = self.pending.pop(name, None)
        text = "".join(pieces[0]) if pieces else ""
        if not text:
            return
        last = self.outputs[-1] if self.outputs and not self.clear_pending else None
        if last is not None and last.output_type == "stream" and last.name == name:
            # nbclient coalesces consecutive stream messages too
            if self.tail is None or self.tail[0] is not last:
                self.tail = (last, [last.text])
            self.tail[1].append(text)
        else:
            self._append(_new_output("stream", name=name, text=text))
            self.tail = (self.outputs[-1], [text])

    def display(self, data: Any, metadata: Any, transient: Any, update: bool) -> None:
        self.flush_all()
        display_id = transient.get("display_id")
        marked = mark_display(metadata, display_id, False) if display_id and self.mark_displays else metadata
        if display_id:
            # As nbclient does: every output already showing this display id, in
            # any cell of the task, takes the new data.
            for out in self.displays.get(display_id, []):
                out.data, out.metadata = copy.deepcopy(data), copy.deepcopy(marked)
        if update:
            if display_id and self.mark_displays:  # the merge applies it to other apps' cells
                self._append(_new_output("display_data", data=copy.deepcopy(data),
                                           metadata=mark_display(metadata, display_id, True)))
            return
        out = _new_output("display_data", data=data, metadata=marked)
        self._append(out)
        if display_id:
            self.displays.setdefault(display_id, []).append(out)

    def result(self, data: Any, metadata: Any, count: int) -> None:
        self.flush_all()
        self._append(_new_output("execute_result", data=data, metadata=metadata,
                                   execution_count=count))

    def error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        self.flush_all()
        self._append(_new_output("error", ename=ename, evalue=evalue, traceback=traceback))

    def clear(self, wait: bool) -> None:
        self.flush_all()
        if wait:
            self.clear_pending = True
        else:
            self.outputs.clear()
            self.tail = None


_recorder = _Recorder()


def is_engine_shell(shell: Any) -> bool:
    """Whether ``shell`` is this module's shell (the ``ipython`` engine), not a kernel's."""
    return _shell is not None and shell is _shell


def new_task(mark_displays: bool = False, stdout_file: Any = None, stderr_file: Any = None) -> None:
    """Forget the displays of the previous task (display ids are per notebook).

    ``mark_displays``: record display ids in the outputs and keep updates as
    outputs (:func:`mark_display`), for the merge to apply across apps.
    ``stdout_file``, ``stderr_file``: files that get the cells' printed text as
    it is written, as papermill's options of these names do for a kernel.
    """
    _recorder.displays = {}
    _recorder.mark_displays = mark_displays
    _recorder.tee = {name: f for name, f in (("stdout", stdout_file), ("stderr", stderr_file)) if f is not None}


def mark_display(metadata: Any, display_id: str, update: bool) -> dict[str, Any]:
    """``metadata`` of a display output, marked with its display id (``update``:
    an update of that id, which the merge applies to earlier outputs and drops)."""
    marked = copy.deepcopy(dict(metadata or {}))
    marked["nbpipe"] = {"update_display" if update else "display_id": display_id}
    return marked


def mark_kernel_displays(shell: Any) -> None:
    """In a Jupyter kernel running a task: mark display outputs as this
    module's shell marks them, so the merge applies updates across apps.

    An update becomes a marked ``display_data`` without its display id: nbclient
    keeps it as an output (it drops an update of an id it has not shown).
    """
    if shell is None or is_engine_shell(shell):
        return

    def hook(msg: Any) -> Any:
        content = msg.get("content", {})
        display_id = content.get("transient", {}).get("display_id")
        if not display_id or msg["header"]["msg_type"] not in ("display_data", "update_display_data"):
            return msg
        update = msg["header"]["msg_type"] == "update_display_data"
        content["metadata"] = mark_display(content.get("metadata"), display_id, update)
        if update:
            msg["msg_type"] = msg["header"]["msg_type"] = "display_data"
            content.pop("transient", None)
        return msg

    shell.display_pub.register_hook(hook)


def reset(shell: Any) -> None:
    """Empty the namespace and history, leaving what a new kernel's namespace has.

    ``InteractiveShell.reset`` drops the dunder names of the ``__main__`` module
    (``__doc__``, ``__loader__``, ``__spec__``, ...), which a kernel's
    ``globals()`` shows: put them back, first, as a kernel has them.
    """
    import types

    shell.reset(new_session=False)
    shell.execution_count = 1
    module = types.ModuleType("__main__", "Automatically created module for IPython interactive environment")
    names = {**vars(module), **shell.user_ns, "_": "", "__": "", "___": ""}
    shell.user_ns.clear()
    shell.user_ns.update(names)


def _no_input(prompt: Any = "") -> str:
    from IPython.core.error import StdinNotImplementedError

    # nbclient does not allow stdin, so ipykernel refuses input() with these words.
    raise StdinNotImplementedError("raw_input was called, but this frontend does not support input requests.")


def _no_getpass(prompt: Any = "", stream: Any = None) -> str:
    from IPython.core.error import StdinNotImplementedError

    raise StdinNotImplementedError("getpass was called, but this frontend does not support input requests.")


def run_cell(shell: Any, source: str, outputs: list[Any] | None = None,
             store_history: bool = True) -> tuple[list[Any], bool]:
    """Run one cell; return its outputs and whether it raised.

    Outputs are appended to ``outputs`` as they come, so a notebook saved while
    the cell runs (or when it is stopped) shows what it printed so far.
    """
    _recorder.outputs = outputs if outputs is not None else []
    _recorder.clear_pending = False
    _recorder.pending = {}
    _recorder.tail = None
    real_out, real_err = sys.stdout, sys.stderr
    real_input, real_getpass = builtins.input, getpass.getpass
    sys.stdout, sys.stderr = _Stream("stdout", real_out), _Stream("stderr", real_err)
    builtins.input, getpass.getpass = _no_input, _no_getpass
    try:
        result = shell.run_cell(source, store_history=store_history)
    finally:
        _recorder.flush_all()  # as a kernel flushes when the cell ends
        sys.stdout, sys.stderr = real_out, real_err
        builtins.input, getpass.getpass = real_input, real_getpass
        shell.payload_manager.clear_payload()  # pager text: a kernel's client shows none of it
    failed = result.error_before_exec is not None or result.error_in_exec is not None
    return _recorder.outputs, failed

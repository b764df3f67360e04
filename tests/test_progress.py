"""What ``nbpipe execute`` shows on the terminal (nbpipe/progress.py): the live view on
a TTY (under util-linux ``script``, a real pseudo-terminal), ``-q``, ``-v`` and the
failing cell's line. Piped runs print the plain lines the other suites read."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ENGINE_PARAMS
from nbbuild import code, nbpipe_cli, write

import nbpipe
from nbpipe.events import Event, Kind
from nbpipe.execution.base import AppStatus
from nbpipe.store import Store
from nbpipe.tail import OutputTail

SCRIPT = shutil.which("script")
needs_script = pytest.mark.skipif(SCRIPT is None or not sys.platform.startswith("linux"),
                                  reason="needs util-linux `script` to give the run a pseudo-terminal")

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|38;5;\d+)(?:;[0-9;]*)?m")
HIDE, SHOW = "\x1b[?25l", "\x1b[?25h"


def _tty_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE")}
    return {**env, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40", "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8", **extra}


class _Terminal:
    """``nbpipe ARGS`` in a pseudo-terminal; what it draws is collected as it comes."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        # exec: whatever shell ``script`` runs (dash forks) is replaced, so the
        # driver is script's child and leads the terminal's process group alone
        command = "exec " + shlex.join([sys.executable, "-m", "nbpipe", *args])
        self.proc = subprocess.Popen([SCRIPT or "script", "-qfec", command, "/dev/null"], cwd=cwd, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            self._chunks.append(chunk)

    @property
    def raw(self) -> str:
        return b"".join(self._chunks).decode("utf-8", "replace")

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw).replace("\r\n", "\n").replace("\r", "\n")

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text):
            assert self.proc.poll() is None or time.monotonic() < deadline and self._reader.is_alive(), \
                f"{pattern!r} never came:\n{self.text[-3000:]}"
            assert time.monotonic() < deadline, f"{pattern!r} never came:\n{self.text[-3000:]}"
            time.sleep(0.05)

    def finish(self, timeout: float = 180) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(timeout=10)
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
        return code

    def driver_pid(self) -> int:
        """The nbpipe process: the child of ``script`` (it leads the terminal's session)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        stat = (entry / "stat").read_text().rpartition(")")[2].split()
                    except OSError:
                        continue
                    if int(stat[1]) == self.proc.pid:
                        return int(entry.name)
            time.sleep(0.05)
        raise AssertionError("script started no child")


def _cursor_restored(raw: str) -> bool:
    return HIDE in raw and raw.rfind(SHOW) > raw.rfind(HIDE)


@pytest.fixture
def mapped(tmp_path: Path) -> Path:
    """A map app with a failing item, and an app that computes for a while with no event."""
    return write(tmp_path / "m.ipynb",
                 code("import time\nchunks = [1, 2, 0, 4]", "app:load"),
                 code("share = 12 / chunk", "app:divide", "map:chunk=chunks"),
                 code("time.sleep(2.5)\nfitted = 1", "app:fit"),
                 code("total = sum(share)", "app:total"))


@needs_script
@pytest.mark.parametrize("no_color", [False, True], ids=["colour", "NO_COLOR"])
def test_a_terminal_gets_a_live_view_with_a_heartbeat_map_bars_and_the_final_state(
        mapped: Path, no_color: bool) -> None:
    env = _tty_env(**({"NO_COLOR": "1"} if no_color else {}))
    term = _Terminal(["execute", mapped.name, "--workers", "2"], mapped.parent, env)
    assert term.finish() == 1, term.text[-3000:]
    raw, text = term.raw, term.text
    # the live region: one line per running app with its elapsed time; while fit computes
    # and no event comes, the refresh thread still redraws it, so its clock moves
    clocks = set(re.findall(r"^fit\s+(\d+\.\d)s\s*$", text, re.M))
    assert len(clocks) >= 5, text[-3000:]
    # a progress bar for the map app, which says how many items failed
    assert re.search(r"^divide\s+[━╸╺]{20,}\s+4/4 · 1 failed\s+\d+\.\ds", text, re.M), text[-3000:]
    # finished apps scroll above the region as the plain lines
    assert re.search(r"completed fit in 2\.\ds", text)
    assert "skipped   total: app 'divide' failed" in text
    # the final state stays, the cursor is shown again
    assert re.search(r"nbpipe: 4/4 apps · 2 completed · 1 failed · 1 skipped · \d+\.\ds", text)
    assert _cursor_restored(raw)
    assert "nbpipe: wrote m.merged.ipynb" in text
    if no_color:
        assert not COLOUR.search(raw), COLOUR.search(raw)
    else:
        assert COLOUR.search(raw)


def test_a_piped_run_gets_plain_lines_and_no_escape_sequence(mapped: Path) -> None:
    result = nbpipe_cli("execute", mapped, cwd=mapped.parent)
    assert result.returncode == 1
    assert "\x1b" not in result.stderr
    assert re.search(r"^nbpipe \[ +\d+\.\ds\] \(\d/4\) started   fit$", result.stderr, re.M)


@needs_script
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_live_view_leaves_the_terminal_restored(tmp_path: Path, signum: int) -> None:
    nb = write(tmp_path / "slow.ipynb",
               code("import time\ntime.sleep(120)\nx = 1", "app:slow"),
               code("y = x", "app:after"))
    term = _Terminal(["execute", nb.name], tmp_path, _tty_env())
    term.wait_for(r"slow\s+1\.\ds")  # the live region is up and the app runs
    os.killpg(term.driver_pid(), signum)  # as the terminal's Ctrl-C does (SIGINT to the process group)
    assert term.finish(timeout=60) == 128 + signum
    raw = term.raw
    assert _cursor_restored(raw), repr(raw[-400:])
    assert "nbpipe: interrupted" in term.text
    # nothing is drawn after the cursor came back but the closing lines
    assert "\x1b[1A" not in raw[raw.rfind(SHOW):]


def test_quiet_prints_only_what_went_wrong_and_the_wrote_line(mapped: Path, tmp_path: Path) -> None:
    result = nbpipe_cli("execute", mapped, "-q", cwd=mapped.parent)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert not [line for line in lines if re.search(r"\) (started|completed|mapping|skipped) ", line)], lines
    assert any(re.search(r"failed    divide in .*ZeroDivisionError", line) for line in lines), lines
    assert any(line.startswith("nbpipe: wrote ") for line in lines)
    ok = write(tmp_path / "ok.ipynb", code("x = 1", "app:a"), code("y = x", "app:b"))
    result = nbpipe_cli("execute", ok, "--quiet", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr.splitlines() == [line for line in result.stderr.splitlines()
                                          if line.startswith("nbpipe: wrote ")] != []


def test_quiet_and_verbose_exclude_each_other(mapped: Path) -> None:
    result = nbpipe_cli("execute", mapped, "-q", "-v", cwd=mapped.parent)
    assert result.returncode == 2 and "not allowed with" in result.stderr


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_verbose_shows_what_an_app_prints_while_it_runs(tmp_path: Path, engine: str) -> None:
    flag = tmp_path / "go"
    nb = write(tmp_path / "v.ipynb",
               code("xs = [1, 2]", "app:load"),
               code("print('square of', x)\ny = x * x", "app:square", "map:x=xs"),
               code(f"import os, time, sys\nprint('waiting for the flag', flush=True)\n"
                    f"while not os.path.exists({str(flag)!r}):\n    time.sleep(0.05)\n"
                    "print('flag seen', file=sys.stderr)\nz = 1", "app:wait"))
    seen: list[str] = []
    with subprocess.Popen([sys.executable, "-m", "nbpipe", "execute", nb.name, "-v", "--engine", engine],
                          cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                seen.append(line.rstrip("\n"))
                if seen[-1] == "wait | waiting for the flag":
                    break
            # the line came while the app still runs: it waits for this flag
            assert seen and seen[-1] == "wait | waiting for the flag", seen
            assert proc.poll() is None
            flag.touch()
            seen += proc.stderr.read().splitlines()
            assert proc.wait(timeout=120) == 0, seen
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "wait | flag seen" in seen
    assert seen.index("wait | flag seen") < next(i for i, line in enumerate(seen) if "completed wait in" in line)
    assert {"square[0] | square of 1", "square[1] | square of 2"} <= set(seen), seen


def test_without_verbose_tasks_write_no_output_log(tmp_path: Path) -> None:
    nb = write(tmp_path / "n.ipynb", code("print('hello')\nx = 1", "app:a"))
    run = nbpipe.execute(nb, keep_run_dir=True)
    assert run.ok and run.run_dir is not None
    assert not (run.run_dir / "output").exists()
    logs: list[Path] = []
    run = nbpipe.execute(nb, keep_run_dir=True, on_output=logs.append)
    assert logs == [run.run_dir] and (logs[0] / "output" / "a.log").read_text() == "hello\n"


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_a_failure_shows_the_failing_line_of_the_cell(tmp_path: Path, engine: str) -> None:
    nb = write(tmp_path / "f.ipynb",
               code("n, ks = 0, [5]\ndef inverse(v):\n    return 1 / v", "app:load"),
               code("x = 1\n\ny = 1 / n\nprint(y)", "app:fit"),
               code("%time z = inverse(n)", "app:magic"),
               code("w = [1, 2][k]", "app:each", "map:k=ks"))
    events: list[Event] = []
    nbpipe.execute(nb, engine=engine, on_event=events.append)
    errors = {e.app: e.error for e in events if e.kind is Kind.DONE and e.error}
    fit, magic, each = errors["fit"], errors["magic"], errors["each"]
    assert fit is not None and (fit.count, fit.line, fit.source) == (2, 3, "y = 1 / n")
    # the cell's own line, not IPython's translation of the magic
    assert magic is not None and (magic.count, magic.line, magic.source) == (3, 1, "%time z = inverse(n)")
    assert each is not None and (each.line, each.source) == (1, "w = [1, 2][k]")
    result = nbpipe_cli("execute", nb, "--engine", engine, cwd=tmp_path)
    assert re.search(r"failed    fit in \d+\.\ds: ZeroDivisionError: division by zero\n {34}"
                     r"cell 2, line 3: y = 1 / n\n", result.stderr), result.stderr
    assert re.search(r"item 0 \(5\): IndexError: list index out of range\n +cell 4, line 1: w = \[1, 2\]\[k\]",
                     result.stderr), result.stderr


def test_verbose_with_debug_shows_each_printed_line_once(tmp_path: Path) -> None:
    # --debug runs the cells in the driver: a line the view prints while a cell runs must
    # not become that cell's output (which -v would then print again, and again). The items
    # run one after the other, each within the scheduler's submit, before any ITEM event.
    nb = write(tmp_path / "d.ipynb",
               code("import time\nxs = [1, 2, 3]", "app:load"),
               code("print('item', x)\ntime.sleep(0.6)\ny = x", "app:each", "map:x=xs"))
    result = nbpipe_cli("execute", nb, "--debug", "-v", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(line for line in result.stderr.splitlines() if " | " in line) == [
        "each[0] | item 1", "each[1] | item 2", "each[2] | item 3"]


def test_the_tail_gives_whole_lines_while_a_task_runs_and_the_rest_when_it_ends(tmp_path: Path) -> None:
    store = Store(tmp_path)
    tail = OutputTail(tmp_path)
    now = time.time()
    tail.follow(Event(Kind.START, "fit", AppStatus.RUNNING, now))
    log = store.output_log("fit")
    log.parent.mkdir()
    log.write_text("epoch 1\nepoch 2, loss ")
    assert [str(p) for p in tail.poll()] == ["fit | epoch 1"]
    assert tail.poll() == []  # the unfinished line waits for its end
    with open(log, "a") as f:
        f.write("0.3\nlast words")
    assert [str(p) for p in tail.poll()] == ["fit | epoch 2, loss 0.3"]
    done = tail.follow(Event(Kind.DONE, "fit", AppStatus.COMPLETED, now))
    assert [str(p) for p in done] == ["fit | last words"]
    with open(log, "a") as f:
        f.write("after the end\n")
    assert tail.poll() == []  # no longer followed
    # a re-run (or a retry) appends to the same log: only what it prints then is shown
    tail.follow(Event(Kind.START, "fit", AppStatus.RUNNING, now))
    with open(log, "a") as f:
        f.write("second run\n")
    assert [str(p) for p in tail.poll()] == ["fit | second run"]

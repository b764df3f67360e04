"""The ipython engine: fast, and no app's global state reaches another app."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from nbbuild import code, read, write

import nbpipe


def _notebook(path: Path, cells: list[tuple[str, list[str]]]) -> Path:
    return write(path, *(code(source, *tags) for source, tags in cells))


def _text(run: nbpipe.RunResult, app: str) -> str:
    cells = [c for c in run.notebook.cells if c.metadata.get("nbpipe", {}).get("app") == app]
    return "".join(o.get("text", "") for c in cells for o in c.outputs if o.output_type == "stream")


LEAK = """
import os, sys, json, random
import numpy as np
import matplotlib
sys.path.insert(0, "/leaked/path")
os.chdir("/")
os.environ["NBPIPE_LEAK"] = "1"
json.LEAKED = True
np.set_printoptions(precision=1)
matplotlib.rcParams["lines.linewidth"] = 9.0
random.seed(123)
np.random.seed(123)
"""

CHECK = """
import os, sys, json, random
import numpy as np
import matplotlib
print("path", "/leaked/path" in sys.path)
print("cwd", os.getcwd() == {cwd!r})
print("env", "NBPIPE_LEAK" in os.environ)
print("module", hasattr(json, "LEAKED"))
print("printoptions", np.get_printoptions()["precision"])
print("rc", matplotlib.rcParams["lines.linewidth"])
print("random", random.random() == random.Random(123).random())
print("nprandom", np.random.random() == np.random.RandomState(123).random_sample())
"""


def test_no_state_leaks_between_apps_on_one_worker(tmp_path: Path) -> None:
    cwd = str(tmp_path.resolve())
    # The checker sits above the leaker (and runs after it): state that serial
    # execution carries forward (nbpipe/state.py) goes only to apps below.
    path = _notebook(tmp_path / "leak.ipynb", [
        ("import numpy as np\nimport matplotlib", ["setup"]),
        (CHECK.format(cwd=cwd), ["app:checker", "after:leaker"]),
        (LEAK, ["app:leaker"]),
    ])
    run = nbpipe.execute(path, output=tmp_path / "out.ipynb", workers=1, engine="ipython")
    assert run.ok, {n: r.error for n, r in run.apps.items()}
    lines = dict(line.split(" ", 1) for line in _text(run, "checker").splitlines())
    assert lines == {
        "path": "False", "cwd": "True", "env": "False", "module": "False",
        "printoptions": "8", "rc": "1.5", "random": "False", "nprandom": "False",
    }


def test_parallel_apps_draw_different_random_numbers(tmp_path: Path) -> None:
    path = _notebook(tmp_path / "rand.ipynb", [
        ("import random\nimport numpy as np", ["setup"]),
        ("a = (random.random(), float(np.random.random()))", ["app:one"]),
        ("b = (random.random(), float(np.random.random()))", ["app:two"]),
        ("print(a[0] != b[0], a[1] != b[1])", ["app:compare"]),
    ])
    run = nbpipe.execute(path, output=tmp_path / "out.ipynb", workers=2)
    assert run.ok
    assert _text(run, "compare").strip() == "True True"


def test_app_timeout_kills_a_forked_app_promptly(tmp_path: Path) -> None:
    path = _notebook(tmp_path / "slow.ipynb", [
        ("import subprocess, time\nprint('started', flush=True)\n"
         "subprocess.run(['sleep', '60'])", ["app:slow", "timeout:1"]),
        ("x = 1\nprint(x)", ["app:quick"]),
    ])
    run = nbpipe.execute(path, output=tmp_path / "out.ipynb", workers=2)
    slow = run.apps["slow"]
    assert slow.status is nbpipe.api.AppStatus.TIMED_OUT
    assert slow.duration is not None and slow.duration < 10
    assert "timeout of 1 s" in slow.error["evalue"]
    assert run.apps["quick"].status is nbpipe.api.AppStatus.COMPLETED
    # The `sleep 60` the app started was stopped with it.
    deadline = time.time() + 5  # a killed process may take a moment to go
    while _sleeping() and time.time() < deadline:
        time.sleep(0.1)
    assert _sleeping() == []


def _sleeping() -> list[str]:
    return [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == "sleep\x0060\x00"]


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_no_worker_process_left_after_a_run(tmp_path: Path) -> None:
    path = _notebook(tmp_path / "plain.ipynb", [("x = 1", ["app:a"]), ("y = x + 1", ["app:b"])])
    before = _zygotes()
    run = nbpipe.execute(path, output=tmp_path / "out.ipynb")
    assert run.ok
    assert _zygotes() - before == set()


def _zygotes() -> set[str]:
    """This process's zygotes (other nbpipe runs on the machine do not count)."""
    return {p for p in os.listdir("/proc")
            if p.isdigit() and "nbpipe.execution.zygote" in _cmdline(p) and _parent(p) == os.getpid()}


def _parent(pid: str) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_a_large_array_ships_between_apps_and_stays_writable(tmp_path: Path) -> None:
    path = _notebook(tmp_path / "big.ipynb", [
        ("import numpy as np\n\ndef poke(a):\n    a[0] = -1.0", ["setup"]),
        ("big = np.arange(1_000_000, dtype=np.float64)", ["app:make"]),
        # "peek" sits above "use", so it reads make's big, but it runs after "use"
        ("print(big[0])", ["app:peek", "after:use"]),
        # poke(big) is a change static analysis cannot see; the mutation check can
        ("poke(big)\nprint(big.sum(), big.flags.writeable)", ["app:use"]),
        ("print(big[0])", ["app:again"]),
    ])
    run = nbpipe.execute(path, output=tmp_path / "out.ipynb", workers=2)
    assert run.ok
    assert _text(run, "use").strip() == f"{sum(range(1_000_000)) - 1.0} True"
    # a reader changes its own copy only: the shipped (memory-mapped) value is untouched
    assert _text(run, "peek").strip() == "0.0"
    # and the app below the change sees it, as in serial execution
    assert _text(run, "again").strip() == "-1.0"


def test_debug_runs_apps_one_by_one_in_this_process_each_in_a_clean_namespace(tmp_path: Path) -> None:
    path = _notebook(tmp_path / "debug.ipynb", [
        ("secret = 42\nx = 1", ["app:a"]),
        ("print('secret' in dir(), x + 1)", ["app:b"]),
    ])
    run = nbpipe.execute(path, output=tmp_path / "out.ipynb", debug=True)
    assert run.ok
    # b got x, which it reads, but not secret, which only a's namespace had
    assert _text(run, "b").strip() == "False 2"


def test_papermill_runs_a_notebook_with_the_nbpipe_engine(tmp_path: Path) -> None:
    """The ``papermill.engine`` entry point: ``papermill --engine nbpipe`` needs no kernel."""
    import subprocess
    from importlib.metadata import entry_points

    if not any(e.name == "nbpipe" for e in entry_points(group="papermill.engine")):
        pytest.fail("nbpipe is not installed with its entry points: pip install -e .")
    source = write(tmp_path / "in.ipynb",
                   code("n = 1", "parameters"),
                   code("%matplotlib inline\nimport os\nprint(n * 2, os.getpid())"),
                   code("n + 40"))
    done = subprocess.run([sys.executable, "-m", "papermill", "--engine", "nbpipe", "-p", "n", "3",
                           str(source), str(tmp_path / "out.ipynb")],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    out = read(tmp_path / "out.ipynb")
    cells = [c for c in out.cells if c.cell_type == "code"]
    assert [c.execution_count for c in cells] == [1, 2, 3, 4]  # the injected parameters count
    printed, pid = cells[2].outputs[0].text.split()
    assert printed == "6" and pid.isdigit()
    # the cells ran in papermill's own process: no kernel was started
    assert not any(o.output_type == "error" for c in cells for o in c.outputs)
    assert cells[3].outputs[0].data["text/plain"] == "43"


def test_the_worker_preloads_what_any_cell_imports_and_survives_bad_imports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / "exits_on_import.py").write_text("raise SystemExit('no')\n")
    (libs / "talks_on_import.py").write_text("print('hello from import')\nimport sys\nLOADED = True\n")
    (libs / "quiet_module.py").write_text("import os\nPID = os.getpid()\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(libs), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(libs))
    path = _notebook(tmp_path / "pre.ipynb", [
        ("import os", ["setup"]),
        ("try:\n    import exits_on_import\nexcept SystemExit as e:\n    print('exit', e)", ["app:a"]),
        ("import talks_on_import\nprint(talks_on_import.LOADED)", ["app:b"]),
        ("import quiet_module\nprint(quiet_module.PID != os.getpid())", ["app:c"]),
        ("import no_such_module_anywhere", ["app:d"]),
    ])
    run = nbpipe.execute(path, output=tmp_path / "out.ipynb", workers=1)
    assert run.apps["d"].error["ename"] == "ModuleNotFoundError"
    assert _text(run, "a").strip() == "exit no"
    # the import's output shows in the app that imports the module, as in a serial run
    assert _text(run, "b") == "hello from import\nTrue\n"
    # quiet_module was imported once, in the preloaded worker, before the app was forked
    assert _text(run, "c").strip() == "True"
    # a module of the notebook's directory is not preloaded: a cell may (re)write it
    (tmp_path / "quiet_module.py").write_text("PID = 0\n")
    assert nbpipe.api._notebook_imports(nbpipe.load_pipeline(path), tmp_path) == (
        "os", "exits_on_import", "talks_on_import", "no_such_module_anywhere")

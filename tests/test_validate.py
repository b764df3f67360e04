"""Checked before anything runs: `nbpipe check` and `nbpipe execute` refuse the same input,
with the same message, and nothing runs (no run directory, no output, no app)."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from nbbuild import code, nbpipe_cli, read, text_of, write

import nbpipe
from nbpipe.atomic import write_text
from nbpipe.validate import MAX_FILE_BYTES

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def ran_notebook(path: Path) -> Path:
    """One app that leaves a file 'ran' behind, so a test can tell that it ran."""
    return write(path, code("n = 1", "parameters"),
                 code("open('ran', 'w').write(str(n))", "app:touch"))


def yaml_file(text: str) -> Any:
    def setup(tmp: Path) -> list[str]:
        (tmp / "p.yaml").write_text(text)
        return ["-f", "p.yaml"]
    return setup


def shell_payload(marker: str) -> str:
    return f"__import__('os').system('touch {marker}')"


BOMB = "".join(f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n"
               for a, b in zip("abcdefgh", "bcdefghi"))
BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + BOMB


def _directory(tmp: Path) -> list[str]:
    (tmp / "sub").mkdir()
    return ["-o", "sub"]


def _file_as_directory(tmp: Path) -> list[str]:
    (tmp / "plain").write_text("")
    return ["-o", "plain/merged.ipynb"]


def _binary_file(tmp: Path) -> list[str]:
    (tmp / "p.yaml").write_bytes(bytes(range(256)) * 4)
    return ["-f", "p.yaml"]


def _huge_file(tmp: Path) -> list[str]:
    with open(tmp / "p.yaml", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: nothing written
    return ["-f", "p.yaml"]


def _parameters_directory(tmp: Path) -> list[str]:
    (tmp / "pdir").mkdir()
    return ["-f", "pdir"]


def _html_directory(tmp: Path) -> list[str]:
    (tmp / "report").mkdir()
    return ["--html", "report"]


# Each case: (id, how to set it up -> extra CLI arguments, a piece of the one-line message).
BAD_INPUT = [
    ("yaml-key-code", yaml_file(f'"x = 1; {shell_payload("pwned")}; z": 1\n'), "not a Python identifier"),
    ("yaml-int-key", yaml_file("1: 2\n"), "parameter name 1 is of type int"),
    ("yaml-keyword", yaml_file("class: 3\n"), "is a Python keyword"),
    ("p-keyword", lambda tmp: ["-p", "class", "1"], "is a Python keyword"),
    ("p-not-identifier", lambda tmp: ["-p", "a-b", "1"], "not a Python identifier"),
    ("p-reserved", lambda tmp: ["-p", "__nbpipe__", "1"], "reserved"),
    ("yaml-binary", yaml_file("n: !!binary " + base64.b64encode(
        f'"+str({shell_payload("pwned")})+"'.encode()).decode() + "\n"), "type bytes"),
    ("yaml-set", yaml_file("n: !!set {a, b}\n"), "type set"),
    ("yaml-python-object", yaml_file("n: !!python/object/apply:os.system ['touch pwned']\n"),
     "not valid YAML"),
    ("yaml-int-key-nested", yaml_file("n: {1: a}\n"), "keys of a mapping parameter must be strings"),
    ("yaml-huge-int", yaml_file("n: 0x" + "f" * 5000 + "\n"), "more than 4300 digits"),
    ("yaml-huge-decimal", yaml_file("n: " + "9" * 5000 + "\n"), "bad YAML value"),
    ("yaml-alias-bomb", yaml_file(BOMB), "expand to more than"),
    ("yaml-alias-loop", yaml_file("n: &a [*a]\n"), "refers to a node that contains it"),
    ("yaml-deep", yaml_file("n: " + "[" * 3000 + "]" * 3000 + "\n"), "nest"),
    ("yaml-not-mapping", yaml_file("- 1\n"), "must be a mapping"),
    ("parameters-directory", _parameters_directory, "cannot read parameters file"),
    ("parameters-binary", _binary_file, "UTF-8"),
    ("parameters-huge", _huge_file, "may hold at most"),
    ("output-directory", _directory, "is a directory"),
    ("output-dev-full", lambda tmp: ["-o", "/dev/full"], "not a regular file"),
    ("output-under-file", _file_as_directory, "is not a directory"),
    ("output-unwritable-dir", lambda tmp: ["-o", "/proc/nbpipe-merged.ipynb"], "cannot write in /proc"),
    ("html-directory", _html_directory, "is a directory"),
    ("html-unwritable-dir", lambda tmp: ["--html", "/proc/nbpipe.html"], "cannot write in /proc"),
    ("html-is-output", lambda tmp: ["-o", "same.ipynb", "--html", "same.ipynb"], "overwrite the merged"),
]


@pytest.mark.parametrize("setup, message", [case[1:] for case in BAD_INPUT],
                         ids=[case[0] for case in BAD_INPUT])
def test_check_and_execute_refuse_the_same_input_before_anything_runs(
        tmp_path: Path, setup: Any, message: str) -> None:
    src = ran_notebook(tmp_path / "nb.ipynb")
    extra = setup(tmp_path)
    runs = tmp_path / "tmp"
    runs.mkdir()
    env = {"TMPDIR": str(runs)}  # the local site's run directories go here
    checked = nbpipe_cli("check", src, *extra, cwd=tmp_path, env=env)
    executed = nbpipe_cli("execute", src, *extra, cwd=tmp_path, env=env)
    for proc in (checked, executed):
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
    line = checked.stderr.strip().splitlines()[-1]
    assert line.startswith("nbpipe: error: ") and message in line, line
    assert executed.stderr.strip().splitlines()[-1] == line  # the same validation said it
    assert not (tmp_path / "ran").exists() and not (tmp_path / "pwned").exists()
    assert not (tmp_path / "nb.merged.ipynb").exists()
    assert list(runs.iterdir()) == []  # no run directory was made


def test_an_input_that_cannot_be_read_is_refused_by_check_and_execute(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("open('ran', 'w')\nopen('data.csv').read()", "app:read",
                                            "inputs:data.csv"))
    (tmp_path / "data.csv").symlink_to(tmp_path / "gone.csv")
    lines = []
    for command in ("check", "execute"):
        proc = nbpipe_cli(command, src, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines.append(proc.stderr.strip().splitlines()[-1])
    assert lines[0] == lines[1] == (f"nbpipe: error: app 'read' declares inputs:data.csv, but "
                                    f"{tmp_path / 'data.csv'} is a symbolic link to nothing")
    assert not (tmp_path / "ran").exists() and not (tmp_path / "nb.merged.ipynb").exists()


@pytest.mark.skipif(ROOT, reason="root reads and writes files whatever their mode")
def test_unreadable_input_and_read_only_notebook_directory(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    src = write(folder / "nb.ipynb", code("open('data.csv').read()", "app:read", "inputs:data.csv"))
    data = folder / "data.csv"
    data.write_text("1\n")
    data.chmod(0)
    try:
        for command in ("check", "execute"):
            proc = nbpipe_cli(command, src, "-o", tmp_path / "out.ipynb", cwd=tmp_path)
            assert proc.returncode == 2 and "data.csv cannot be read" in proc.stderr, proc.stderr
        data.chmod(0o644)
        folder.chmod(0o555)
        for command in ("check", "execute"):
            proc = nbpipe_cli(command, src, cwd=tmp_path)  # default output: beside the notebook
            assert proc.returncode == 2 and "(choose another place with -o)" in proc.stderr, proc.stderr
    finally:
        folder.chmod(0o755)
        data.chmod(0o644)


def _read_only_mount_works() -> bool:
    import shutil
    import subprocess

    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o ro none /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _read_only_mount_works(),
                    reason="needs unshare and mounts in a private namespace (a real read-only directory)")
def test_read_only_notebook_directory_is_refused_by_check_and_execute(tmp_path: Path) -> None:
    import subprocess
    import sys

    folder = tmp_path / "ro"
    folder.mkdir()
    src = ran_notebook(folder / "nb.ipynb")
    for command in ("check", "execute"):
        # A bind mount made read-only, in a mount namespace of this command alone.
        script = (f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} {folder} && "
                  f"exec {sys.executable} -m nbpipe {command} {src}")
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, capture_output=True,
                              text=True, env={**os.environ}, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == (
            f"nbpipe: error: the merged notebook {folder / 'nb.merged.ipynb'}: cannot write in {folder}: "
            "Read-only file system (choose another place with -o)")
    assert not (folder / "ran").exists() and not (tmp_path / "ran").exists()


def test_check_is_ok_with_good_parameters_and_paths(tmp_path: Path) -> None:
    src = ran_notebook(tmp_path / "nb.ipynb")
    (tmp_path / "p.yaml").write_text("n: 2\nwhen: 2024-01-31\n")
    proc = nbpipe_cli("check", src, "-f", "p.yaml", "-p", "match", "1", "-o", "out/new/m.ipynb",
                      "--html", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "; ok" in proc.stdout and not (tmp_path / "ran").exists()
    assert not (tmp_path / "out").exists()  # check creates nothing


def test_api_refuses_hostile_names_and_values_before_running(tmp_path: Path) -> None:
    src = ran_notebook(tmp_path / "nb.ipynb")
    hostile: list[dict[str, Any]] = [
        {f"x = 1; {shell_payload('pwned')}; z": 1},
        {1: 2},
        {"class": 3},
        {"n": b'"+str(' + shell_payload("pwned").encode() + b')+"'},
        {"n": {f'"{shell_payload("pwned")}"'[:10]: object()}},
        {"n": float("inf")},
    ]
    for parameters in hostile:
        with pytest.raises(nbpipe.UsageError):
            nbpipe.execute(src, parameters=parameters)
    assert not (tmp_path / "ran").exists() and not (tmp_path / "pwned").exists()
    assert not (tmp_path / "nb.merged.ipynb").exists()


class _Sneaky(int):
    """An int whose text is code: papermill writes ints with f'{value}'."""

    def __str__(self) -> str:
        return shell_payload("pwned")

    __repr__ = __format__ = lambda self, *spec: shell_payload("pwned")  # noqa: E731


class _SneakyName(str):
    def __format__(self, spec: str) -> str:
        return f"y = 1; {shell_payload('pwned')}; n"


HOSTILE_STRINGS = ['a"b', "a'b", 'x"; import os; os.system("touch pwned"); "', "line\nbreak",
                   "back\\slash\\", '\\"', "tab\tand\r", "\x00nul", "é ü 中文 🎉", "{}",
                   '"""', "'''", "\\x41", "#", "%%bash"]


def test_hostile_values_arrive_as_the_same_data(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb",
                code("n = 0\nstrings = []\nnested = {}\nwhen = ''", "parameters"),
                code("import json\nprint(json.dumps([n, strings, nested, when]))", "app:show"))
    nested = {'k"ey': {"x')\nimport os; os.system('touch pwned')#": ["\"'", {"z": None}]},
              "ok": [1, 2.5, True]}
    import datetime

    run = nbpipe.execute(src, parameters={"n": _Sneaky(7), "strings": HOSTILE_STRINGS, "nested": nested,
                                          _SneakyName("when"): datetime.datetime(2024, 1, 31, 12, 30)},
                         output=tmp_path / "m.ipynb")
    assert run.ok, run.apps
    import json

    shown = json.loads(text_of(read(tmp_path / "m.ipynb").cells[-1]))
    assert shown == [7, HOSTILE_STRINGS, nested, "2024-01-31 12:30:00"]
    assert not (tmp_path / "pwned").exists()


def test_yaml_dates_become_papermill_strings(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("day = None\nstamp = None", "parameters"),
                code("print(repr(day), repr(stamp))", "app:show"))
    (tmp_path / "p.yaml").write_text("day: 2024-01-31\nstamp: 2024-01-31T12:30:00Z\n")
    proc = nbpipe_cli("execute", src, "-f", "p.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    merged = read(tmp_path / "nb.merged.ipynb")
    assert text_of(merged.cells[-1]) == "'2024-01-31' '2024-01-31 12:30:00+00:00'\n"
    assert merged.metadata["nbpipe"]["parameters"] == {"day": "2024-01-31",
                                                       "stamp": "2024-01-31 12:30:00+00:00"}


def test_yaml_anchors_within_bounds_still_work(tmp_path: Path) -> None:
    from nbpipe.validate import read_parameters_file

    (tmp_path / "p.yaml").write_text("base: &b {x: 1, y: [1, 2]}\nn: {<<: *b, y: 3}\nm: *b\n")
    assert read_parameters_file(tmp_path / "p.yaml") == {
        "base": {"x": 1, "y": [1, 2]}, "n": {"x": 1, "y": 3}, "m": {"x": 1, "y": [1, 2]}}


# --------------------------------------------------------------------- atomic writes


def test_a_write_that_fails_after_the_run_keeps_the_run_directory(tmp_path: Path) -> None:
    # The output directory was fine before the run; the app replaces it with a file.
    src = write(tmp_path / "nb.ipynb", code("import os\nos.rmdir('out')\nopen('out', 'w').close()",
                                            "app:spoil"))
    (tmp_path / "out").mkdir()
    runs = tmp_path / "tmp"
    runs.mkdir()
    proc = nbpipe_cli("execute", src, "-o", "out/merged.ipynb", cwd=tmp_path, env={"TMPDIR": str(runs)})
    assert proc.returncode == 1, proc.stderr
    kept = list(runs.iterdir())
    assert len(kept) == 1 and (kept[0] / "tasks" / "spoil.out.ipynb").exists()
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("nbpipe: error: cannot write ") and f"kept in {kept[0]}" in last, last
    assert "Traceback" not in proc.stderr


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "merged.ipynb"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_text(target, "new \ud800")  # a lone surrogate cannot be written as UTF-8
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.ipynb"]


def test_a_link_is_written_through(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    target = tmp_path / "shared" / "report.ipynb"
    target.write_text("old")
    link = tmp_path / "merged.ipynb"
    link.symlink_to(target)
    write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.ipynb"]


def test_a_concurrent_reader_sees_the_old_or_the_new_notebook_never_half(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("print('x' * 4_000_000)", "app:big"))
    out = tmp_path / "nb.merged.ipynb"
    out.write_text('{"old": true}')
    seen: list[str] = []
    done = threading.Event()

    def read_all_the_time() -> None:
        while not done.is_set():
            try:
                seen.append(out.read_text()[-2:])
            except FileNotFoundError:
                seen.append("missing")

    reader = threading.Thread(target=read_all_the_time)
    reader.start()
    try:
        for _ in range(3):
            assert nbpipe.execute(src).ok
    finally:
        done.set()
        reader.join()
    assert len(seen) > 100
    assert set(seen) <= {"e}", "}\n"}, sorted(set(seen))  # the old file's end, or the new one's
    assert (out.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask

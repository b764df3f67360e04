"""Property-based fuzzing of parameters and YAML parameter files (hypothesis).

Whatever the names, values and YAML documents, the static path (`nbpipe check`
and the parameter layer) only exits 0 or 2, never raises anything else, never
reaches a shell, and takes at most a few seconds; what it accepts, papermill
injects as literal assignments only. A bounded number of examples runs in the
default suite, many more under ``-m slow``.
"""

from __future__ import annotations

import ast
import contextlib
import datetime
import io
import keyword
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from nbbuild import code, write
from papermill.translators import translate_parameters

import nbpipe
from nbpipe.cli import main, parse_value
from nbpipe.errors import UsageError
from nbpipe.validate import check_parameters, read_parameters_file

FAST = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MANY = settings(FAST, max_examples=1500)
SECONDS_PER_EXAMPLE = 5.0


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A notebook with a parameters cell, and the marker a shell would leave."""
    folder = tmp_path_factory.mktemp("fuzz")
    write(folder / "nb.ipynb", code("n = 1\nitems = [1, 2]", "parameters"),
          code("print(n)", "app:show"))
    return folder


def marker(place: Path) -> Path:
    return place / "pwned"


# --------------------------------------------------------------------- strategies

PAYLOADS = ["__import__('os').system('touch pwned')", "x = 1; __import__('os').system('touch pwned'); z",
            "'; import os; os.system(\"touch pwned\"); '", '"+str(__import__("os").system("touch pwned"))+"',
            "\\\"; touch pwned; \\\"", "\n__import__('os').system('touch pwned')\n#"]
NAMES = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
    st.sampled_from(keyword.kwlist + keyword.softkwlist + ["__nbpipe__", "__nbpipe_x", "é", "ﬁ"]
                    + PAYLOADS),
    st.text(max_size=12),
)
KEYS = st.one_of(NAMES, st.integers(), st.booleans(), st.none(), st.floats(), st.dates())
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**4000, max_value=10**4400),
    st.floats(), st.text(), st.sampled_from(PAYLOADS), st.dates(), st.datetimes(),
    st.binary(max_size=16), st.times(),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner), st.frozensets(st.integers(), max_size=3),
    st.dictionaries(KEYS, inner, max_size=4)), max_leaves=20)

JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              st.text(), st.sampled_from(PAYLOADS)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(PAYLOADS)),
                                            inner, max_size=3)), max_leaves=10)

FRAGMENTS = [
    "a: &a [x, x, x, x, x, x, x, x, x]", "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]",
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]", "d: [*c, *c, *c, *c, *c, *c, *c, *c, *c]",
    "loop: &l [*l]", "merge: {<<: *a}", "m: &m {k: 1}", "n: {<<: *m, j: 2}",
    "p: !!python/object/apply:os.system ['touch pwned']", "q: !!python/name:os.system",
    "r: !!binary aGVsbG8=", "s: !!set {a, b}", "t: !!omap [a: 1, b: 2]", "u: !!pairs [a: 1]",
    "v: !!timestamp 2024-01-31T12:00:00Z", "w: 2024-01-31", "y: .nan", "z: -.inf", "aa: 0x" + "f" * 4000,
    "bb: " + "9" * 4400, "? [k1, k2]\n: 1", "? {k: v}\n: 1", "1: 2", "class: 3", "null: 4",
    "true: 5", "2024-01-31: 6", "1.5: 7", "'x = 1; z': 8", "cc: " + "[" * 200 + "]" * 200,
    "dd: !!str 1", "ee: !!int '12'", "ff: !!float '1e400'", "gg: !custom x", "---", "%YAML 1.1",
    "...", "hh: \"\\x00\"", "ii: |\n  multi\n  line", "\tbad: tab", "jj: &anchor", "kk: *undefined",
]


def yaml_text(value: Any) -> str:
    """yaml's full dumper writes tuples, sets, bytes and objects with their tags."""
    try:
        return yaml.dump(value, allow_unicode=True)
    except ValueError:  # an int too long for str(): the hand-written fragments cover it
        return "n: 1\n"


RAW = st.one_of(
    st.dictionaries(KEYS, VALUES, max_size=5).map(yaml_text),
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=8).map("\n".join),
    st.text(max_size=200),
    st.builds(lambda head, tail: head + "\n" + tail,
              st.lists(st.sampled_from(FRAGMENTS), max_size=4).map("\n".join),
              st.dictionaries(NAMES, VALUES, max_size=3).map(yaml_text)),
)


# --------------------------------------------------------------------- properties


def assert_injected_as_literals(parameters: dict[str, Any]) -> None:
    """papermill's injected cell for ``parameters`` is `name = literal` lines, nothing else."""
    source = translate_parameters("python3", "python", parameters, "Parameters")
    tree = ast.parse(source)
    assigned = {}
    for statement in tree.body:
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1, ast.dump(statement)
        target = statement.targets[0]
        assert isinstance(target, ast.Name)
        assert not any(isinstance(n, (ast.Call, ast.Attribute, ast.Subscript, ast.Lambda))
                       for n in ast.walk(statement.value)), ast.unparse(statement.value)
        assigned[target.id] = ast.literal_eval(statement.value)
    assert assigned == parameters


def assert_static_path(argv: list[str], place: Path) -> int:
    """Run `nbpipe ARGV` in this process: 0 or 2, never an exception, never a shell, quick."""
    start = time.monotonic()
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(place)  # where a payload's `touch pwned` would land
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
    except SystemExit as exc:  # argparse's own usage errors: `-p x -inf` looks like an option
        status = exc.code
    finally:
        os.chdir(here)
    took = time.monotonic() - start
    assert status in (0, 2), err.getvalue()
    if status == 2:
        lines = err.getvalue().strip().splitlines()
        assert lines[-1].startswith(("nbpipe: error: ", "nbpipe check: error: ")), lines
    assert not marker(place).exists()
    assert took < SECONDS_PER_EXAMPLE, f"{took:.1f} s"
    return status


def check_values(values: dict[Any, Any]) -> None:
    try:
        plain = check_parameters(values)
    except UsageError as exc:
        assert "\n" not in str(exc)  # one line
        event("refused")
        return
    event("accepted")
    assert_injected_as_literals(plain)


# --------------------------------------------------------------------- default suite


@FAST
@given(st.one_of(st.dictionaries(KEYS, VALUES, max_size=6), st.dictionaries(NAMES, JSON, max_size=6)))
def test_api_parameters_are_refused_or_injected_as_literals(values: dict[Any, Any]) -> None:
    check_values(values)


@FAST
@given(st.lists(st.tuples(NAMES, st.one_of(st.text(max_size=30), st.sampled_from(
    ["1", "-0", "1e400", "nan", "-inf", "True", "None", "9" * 5000, "0x10", "1_000"]))), max_size=4))
def test_p_pairs_through_check(place: Path, pairs: list[tuple[str, str]]) -> None:
    argv = ["check", "nb.ipynb"]
    for name, value in pairs:
        argv += ["-p", name, value]
    status = assert_static_path(argv, place)
    event(f"exit {status}")
    if status == 0:
        assert_injected_as_literals(check_parameters({n: parse_value(v) for n, v in pairs}))


@FAST
@given(RAW)
def test_yaml_files_through_check(place: Path, text: str) -> None:
    yaml_through_check(place, text)


def yaml_through_check(place: Path, text: str) -> None:
    path = place / "params.yaml"
    try:
        path.write_text(text, encoding="utf-8")
    except UnicodeEncodeError:  # a lone surrogate: write its bytes as they come
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
    status = assert_static_path(["check", "nb.ipynb", "-f", "params.yaml"], place)
    event(f"exit {status}")
    if status == 0:
        assert_injected_as_literals(read_parameters_file(path))


def test_alias_bomb_is_refused_fast_and_small(place: Path) -> None:
    import resource

    bomb = "\n".join(FRAGMENTS[:4]) + "\n" + "\n".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("defghi", "efghij"))
    (place / "bomb.yaml").write_text(bomb.replace("d: [", "d: &d ["))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert assert_static_path(["check", "nb.ipynb", "-f", "bomb.yaml"], place) == 2
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 100_000, f"{grown_kib} KiB"


# --------------------------------------------------------------------- slow suite


@pytest.mark.slow
@MANY
@given(st.one_of(st.dictionaries(KEYS, VALUES, max_size=8), st.dictionaries(NAMES, JSON, max_size=8)))
def test_many_api_parameters(values: dict[Any, Any]) -> None:
    check_values(values)


@pytest.mark.slow
@MANY
@given(RAW)
def test_many_yaml_files(place: Path, text: str) -> None:
    yaml_through_check(place, text)


@pytest.mark.slow
@settings(FAST, max_examples=8)
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(
    lambda n: not keyword.iskeyword(n)), JSON, min_size=1, max_size=3))
def test_accepted_values_reach_the_app_unchanged(tmp_path_factory: pytest.TempPathFactory,
                                                 values: dict[str, Any]) -> None:
    plain = check_parameters(values)
    folder = tmp_path_factory.mktemp("run")
    src = write(folder / "nb.ipynb", code("import json", "setup"),
                code(f"print(json.dumps({{k: globals()[k] for k in {sorted(plain)!r}}}))", "app:show"))
    with pytest.warns(nbpipe.ParameterWarning, match="no cell tagged 'parameters'"):  # as papermill injects them
        run = nbpipe.execute(src, parameters=values)
    assert run.ok, run.apps
    shown = run.notebook.cells[-1].outputs[0]["text"]
    import json

    assert json.loads(shown) == plain
    assert not (folder / "pwned").exists()


def test_dates_follow_papermill() -> None:
    day, stamp = datetime.date(2024, 1, 31), datetime.datetime(2024, 1, 31, 8, 5)
    assert check_parameters({"d": day, "s": stamp}) == {"d": str(day), "s": str(stamp)}

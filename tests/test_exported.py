"""The public surface: ``nbpipe.__all__`` (guard) and errors that survive pickling."""

from __future__ import annotations

import pickle
import subprocess
import sys
from typing import Any

import pytest

import nbpipe
from nbpipe import errors


def test_public_names_are_exactly_these() -> None:
    # Changing the public API is a decision: update this list on purpose.
    assert sorted(nbpipe.__all__) == sorted([
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
        "VerifyResult",
        "verify",
        "ShipError",
        "SiteError",
        "StateError",
        "TagError",
        "UnsupportedTagError",
        "UsageError",
        "WorkerError",
        "execute",
        "load_pipeline",
    ])
    for name in nbpipe.__all__:
        assert hasattr(nbpipe, name), name


ERRORS = [name for name in errors.__all__ if not name.endswith("Warning")]


def test_every_error_is_exported_and_derives_from_one_root() -> None:
    tree = {name for name in errors.__all__}
    assert tree <= set(nbpipe.__all__)
    for name in tree:
        root = nbpipe.NbpipeWarning if name.endswith("Warning") else nbpipe.NbpipeError
        assert issubclass(getattr(nbpipe, name), root)
        assert getattr(nbpipe, name) is getattr(errors, name)
    assert issubclass(nbpipe.NbpipeWarning, UserWarning)  # shown by Python's default filters


def samples() -> list[Any]:
    return [
        nbpipe.NbpipeError("root"),
        nbpipe.UsageError("--workers must be at least 1"),
        nbpipe.NotebookError("x.ipynb: no such notebook"),
        nbpipe.TagError("needs a whole number", cell_index=3, cell_id="abc123", tag="retries:x"),
        nbpipe.UnsupportedTagError("no GPUs", cell_index=1, cell_id="def456", tag="gpus:1"),
        nbpipe.GraphError("inputs:x.csv matches nothing"),
        nbpipe.CycleError([("a", "b", "reads x"), ("b", "a", "after:b")]),
        nbpipe.SiteError("unknown site 'x'"),
        nbpipe.ShipError(variable="gen", type_name="generator", producer="make", consumers=["use", "plot"],
                         reason="TypeError: cannot pickle 'generator' object"),
        nbpipe.StateError(cell=2, app="style", statement="os.chdir('data')",
                          reason="FileNotFoundError: [Errno 2] No such file or directory: 'data'"),
        nbpipe.MutationError(app="clean", variable="df", source="app 'load'", readers=["plot"],
                             reason="app 'plot' runs before app 'clean'"),
        nbpipe.RunError("1 app failed"),
        nbpipe.OutputError("cannot write out.ipynb: No space left on device"),
        nbpipe.WorkerError("site 'cluster': no worker started within 60 s"),
    ]


def fields(err: Any) -> dict[str, Any]:
    return {**vars(err), "type": type(err), "str": str(err), "args": err.args,
            "exit_code": err.exit_code}


def test_samples_cover_every_exported_error() -> None:
    assert {type(e).__name__ for e in samples()} == set(ERRORS)


@pytest.mark.parametrize("err", samples(), ids=lambda e: type(e).__name__)
def test_errors_pickle_with_their_fields(err: Any) -> None:
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(err, protocol=protocol))
        assert fields(back) == fields(err)
    back = pickle.loads(pickle.dumps(err))
    with pytest.raises(type(err)) as info:
        raise back
    assert str(info.value) == str(err)


def test_specific_fields_survive() -> None:
    by_type = {type(e).__name__: pickle.loads(pickle.dumps(e)) for e in samples()}
    tag, cycle, ship = by_type["TagError"], by_type["CycleError"], by_type["ShipError"]
    assert (tag.problem, tag.cell_index, tag.cell_id, tag.tag) == ("needs a whole number", 3, "abc123",
                                                                  "retries:x")
    assert cycle.cycle == [("a", "b", "reads x"), ("b", "a", "after:b")]
    assert "a -> b (reads x) -> a (after:b)" in str(cycle)
    assert (ship.variable, ship.type_name, ship.producer, ship.consumers) == ("gen", "generator", "make",
                                                                              ["use", "plot"])
    assert ship.exit_code == 1 and tag.exit_code == 2


def test_errors_cross_a_process_boundary() -> None:
    """A child process unpickles every error, re-raises it and sends it back."""
    child = (
        "import pickle, sys\n"
        "out = []\n"
        "for err in pickle.load(sys.stdin.buffer):\n"
        "    try:\n"
        "        raise err\n"
        "    except Exception as caught:\n"
        "        out.append(caught)\n"
        "pickle.dump(out, sys.stdout.buffer)\n"
    )
    sent = samples()
    proc = subprocess.run([sys.executable, "-c", child], input=pickle.dumps(sent), capture_output=True,
                          check=True)
    back = pickle.loads(proc.stdout)
    assert [fields(e) for e in back] == [fields(e) for e in sent]

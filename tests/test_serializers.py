"""Shipping what cloudpickle alone cannot: the serializer registry, the values
that never ship (with their fix), and classes of not-yet-imported submodules.

The registry and the pickler are tested in-process; each kind of value is then
shipped end to end through ``nbpipe.execute`` on every engine and compared
with papermill running the notebook top to bottom (the ``both`` fixture).
"""

from __future__ import annotations

import io
import pickle
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from nbbuild import nbpipe_cli, read, text_of, write

import nbpipe
from conftest import Runs, assert_same_outputs, code, notebook
from nbpipe import serializers
from nbpipe.api import ENGINES

EXAMPLES = Path(__file__).resolve().parent.parent / "example_notebooks"


def stdout(runs: Runs, index: int) -> str:
    """What the code cell at source position ``index`` printed in nbpipe's merged notebook."""
    return text_of(runs.nbp(runs.source.cells[index].id))


def assert_ran(runs: Runs) -> None:
    assert runs.papermill_error is None, runs.papermill_error
    assert runs.result.ok, {n: r.error for n, r in runs.result.apps.items() if not r.status.ok}
    assert_same_outputs(runs)


# --------------------------------------------------------------------- the registry


class Handle:
    """Stands for a library object holding a resource: a path and a lock."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()


class SubHandle(Handle):
    pass


def _reopen(path: str) -> Handle:
    return Handle(path)


def ship(value: Any) -> Any:
    """Pickle ``value`` with the runtime's pickler and load it back."""
    out = io.BytesIO()
    serializers.pickler_class()(out, protocol=5).dump(value)
    return pickle.loads(out.getvalue())


@pytest.fixture
def handle_registered() -> Any:
    name = f"{Handle.__module__}.{Handle.__qualname__}"
    serializers.register(name, dump=lambda h: h.path, load=_reopen)
    yield name
    serializers.registry.cache_clear()


def test_a_registered_value_ships_nested_in_lists_dicts_and_objects(handle_registered: str) -> None:
    class Box:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

    value = {"one": Handle("a.h5"), "many": [Handle("b.h5"), (SubHandle("c.h5"),)], "box": Box(Handle("d.h5"))}
    back = ship(value)
    assert back["one"].path == "a.h5" and isinstance(back["one"], Handle)
    assert [back["many"][0].path, back["many"][1][0].path, back["box"].inner.path] == ["b.h5", "c.h5", "d.h5"]
    assert back["one"].lock is not value["one"].lock and not back["one"].lock.locked()


def test_without_a_serializer_the_same_value_fails() -> None:
    with pytest.raises(TypeError, match="lock"):
        ship([Handle("a.h5")])


def test_the_nearest_named_class_wins_and_the_last_registration_wins() -> None:
    first = serializers.Serializer(("tests.Base",), str, str)
    registry = serializers.Registry((first,))
    base = type("Base", (), {"__module__": "tests"})
    child = type("Child", (base,), {"__module__": "tests"})
    assert registry.find(child) is first and registry.find(dict) is None
    own = serializers.Serializer(("tests.Child",), repr, repr)
    registry.add(own)
    assert registry.find(child) is own and registry.find(base) is first
    later = serializers.Serializer(("tests.Base",), len, len)
    registry.add(later)
    assert registry.find(base) is later


def test_register_needs_the_module_in_the_name() -> None:
    with pytest.raises(ValueError, match=r"'mylib\.Handle'"):
        serializers.register("Handle", dump=str, load=str)


def test_register_resolves_a_public_alias_and_suggests_a_close_name() -> None:
    import json
    import json.decoder

    try:
        serializers.register("json.JSONDecoder", dump=str, load=str)
        assert serializers.registry().find(json.decoder.JSONDecoder) is not None
        assert json.JSONDecoder.__module__ == "json.decoder"  # the name differs from the alias
        with pytest.raises(ValueError, match=r"module json has no class JSONDecodr; did you mean json.JSONDecoder"):
            serializers.register("json.JSONDecodr", dump=str, load=str)
        serializers.register("not_imported_anywhere.Thing", dump=str, load=str)  # taken as written
    finally:
        serializers.registry.cache_clear()


def test_the_registry_imports_no_library() -> None:
    probe = ("import sys, numpy, nbpipe.runtime, nbpipe.serializers as s\n"
             "r = s.registry()\n"
             "assert r.find(numpy.ndarray) is None and r.find(dict) is None\n"
             "heavy = {'xgboost', 'h5py', 'uproot', 'keras', 'torch', 'tensorflow'} & set(sys.modules)\n"
             "print(sorted(heavy))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------- what never ships


@pytest.mark.parametrize("make, what", [
    (lambda: (i for i in range(3)), "a generator runs once"),
    (threading.Lock, "a lock belongs to the process"),
    (lambda: threading.Thread(target=print), "a thread belongs to the process"),
])
def test_what_never_ships_is_refused_with_its_fix_even_nested(make: Any, what: str) -> None:
    with pytest.raises(serializers.Unshippable) as info:
        ship({"inside": [make()]})
    assert what in info.value.reason
    assert "{readers}" in info.value.fix


def test_a_generator_fails_the_run_with_the_fix(tmp_path: Path) -> None:
    """End to end: exit code 1, the message on stderr and in the merged notebook."""
    src = write(tmp_path / "nb.ipynb",
                code("squares = (i * i for i in range(4))", "app:make"),
                code("print(sum(squares))", "app:use"))
    done = nbpipe_cli("execute", src, "-o", tmp_path / "out.ipynb", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    fix = "convert it with list(...) in the app that produces it, or create the generator in the app(s) use"
    merged = read(tmp_path / "out.ipynb")
    shown = text_of(merged.cells[[c.get("id") for c in merged.cells].index(read(src).cells[0].id)])
    for text in (done.stderr, shown):
        assert "variable 'squares' of type generator defined by app 'make'" in text
        assert fix in text


# --------------------------------------------------------------------- classes of unimported modules


def test_a_recarray_arrives_as_numpy_recarray(both: Any) -> None:
    """numpy.rec is not imported when ``view(np.recarray)`` makes the value; the
    class still goes by reference, so ``data_rec['age']`` works in a later app."""
    nb = notebook(
        code("import numpy as np\nimport pandas as pd", "setup"),
        code("people = np.zeros(3, dtype=[('name', 'U5'), ('age', 'i4'), ('weight', 'f8')])\n"
             "people['name'] = ['Alice', 'Bob', 'Cathy']\npeople['age'] = [25, 45, 37]\n"
             "people['weight'] = [55.0, 85.5, 68.0]\ndata_rec = people.view(np.recarray)\n"
             "grades = pd.Categorical(['low', 'high', 'low', 'mid'], categories=['low', 'mid', 'high'],"
             " ordered=True)\nframe = pd.DataFrame({'grade': grades, 'score': [1, 2, 3, 4]})",
             "app:make"),
        code("print(type(data_rec).__module__, type(data_rec) is np.recarray)\n"
             "print(data_rec['age'], data_rec.age, data_rec[1].name, data_rec.weight.mean())", "app:use_rec"),
        code("print(people['age'].mean(), people[people['age'] > 30]['name'], people.dtype.names)",
             "app:use_struct"),
        code("print(frame.dtypes.to_dict(), frame.grade.cat.categories.tolist(), frame.grade.max())\n"
             "frame.sort_values('grade')", "app:use_frame"))
    runs = both(nb)
    assert_ran(runs)
    assert stdout(runs, 2) == "numpy.rec True\n[25 45 37] [25 45 37] Bob 69.5\n"
    assert stdout(runs, 3).startswith("35.666666666666664 ['Bob' 'Cathy'] ('name', 'age', 'weight')")
    assert "CategoricalDtype(categories=['low', 'mid', 'high'], ordered=True" in stdout(runs, 4)
    assert "['low', 'mid', 'high'] high" in stdout(runs, 4)


def test_an_unimported_submodule_is_imported_not_copied() -> None:
    probe = ("import sys, pickle, numpy as np, nbpipe.serializers as s, io\n"
             "assert 'numpy.rec' not in sys.modules\n"
             "out = io.BytesIO()\n"
             "s.pickler_class()(out, protocol=5).dump(np.zeros(2, dtype=[('a', 'i4')]).view(np.recarray))\n"
             "print(b'numpy.rec' in out.getvalue(), b'recarray' in out.getvalue(), len(out.getvalue()))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    by_reference, named, size = done.stdout.split()
    assert (by_reference, named) == ("True", "True")
    assert int(size) < 1000, "the class was copied by value"


# --------------------------------------------------------------------- library objects, end to end


def test_an_open_hdf5_file_and_dataset_reach_a_later_app(both: Any, tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py", reason="needs h5py (the test extra)")
    import numpy as np

    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["group/values"] = np.arange(12.0).reshape(3, 4)
        f["group/values"].attrs["unit"] = "GeV"
    nb = notebook(
        code("import h5py", "setup"),
        code("f = h5py.File('../data.h5', 'r')\nvalues = f['group/values']\ngroup = f['group']", "app:open"),
        code("print(values.shape, values.attrs['unit'], values[1, :].sum(), values[()].max())", "app:read"),
        code("print(sorted(f['group']), list(group), f.mode, group.name, values.file.filename.endswith('data.h5'))",
             "app:browse"),
        code("out = h5py.File('made.h5', 'w')\nout['squares'] = [i * i for i in range(5)]", "app:write"),
        code("print(out['squares'][()], out.filename)", "app:read_back"))
    runs = both(nb)
    assert_ran(runs)
    assert stdout(runs, 2) == "(3, 4) GeV 22.0 11.0\n"
    assert stdout(runs, 3) == "['values'] ['values'] r /group True\n"
    assert stdout(runs, 5) == "[ 0  1  4  9 16] made.h5\n"


def test_an_hdf5_dataset_is_reopened_by_absolute_path_from_another_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h5py = pytest.importorskip("h5py", reason="needs h5py (the test extra)")
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with h5py.File("data.h5", "w") as f:
        f["x"] = [1.0, 2.0, 3.0]
    with h5py.File("data.h5", "r") as f:
        out = io.BytesIO()
        serializers.pickler_class()(out, protocol=5).dump({"x": f["x"]})
    monkeypatch.chdir(tmp_path / "elsewhere")
    x = pickle.loads(out.getvalue())["x"]
    assert list(x[()]) == [1.0, 2.0, 3.0] and x.file.mode == "r"
    assert Path(x.file.filename) == tmp_path / "here" / "data.h5"
    x.file.close()


def test_an_in_memory_hdf5_file_says_what_to_ship_instead() -> None:
    h5py = pytest.importorskip("h5py", reason="needs h5py (the test extra)")
    with h5py.File("scratch.h5", "w", driver="core", backing_store=False) as f:
        f["x"] = [1, 2]
        with pytest.raises(ValueError, match=r"in-memory HDF5 file .*write it to disk.*\(dataset\[\(\)\]\)"):
            ship(f["x"])


def test_an_open_root_file_and_tree_reach_a_later_app(both: Any, tmp_path: Path) -> None:
    pytest.importorskip("uproot", reason="needs uproot (the hep extra)")
    shutil.copy(EXAMPLES / "data" / "uproot-Zmumu.root", tmp_path)
    nb = notebook(
        code("import uproot", "setup"),
        code("file = uproot.open('../uproot-Zmumu.root')\nevents = file['events']\nenergy = events['E1']",
             "app:open"),
        code("e1 = events['E1'].array(library='np')\nprint(events.num_entries, len(e1), round(float(e1.sum()), 3))",
             "app:read"),
        code("print(file.keys(), energy.name, energy.array(library='np')[:3], file.file_path)", "app:browse"))
    runs = both(nb)
    assert_ran(runs)
    printed = stdout(runs, 2).split()
    assert printed[:2] == ["2304", "2304"] and float(printed[2]) > 0
    assert stdout(runs, 3).startswith("['events;1'] E1 [")
    assert stdout(runs, 3).endswith("] ../uproot-Zmumu.root\n")


def test_an_xgboost_dmatrix_built_in_one_app_trains_in_another(both: Any) -> None:
    pytest.importorskip("xgboost", reason="needs xgboost (pip install xgboost-cpu; the test extra)")
    nb = notebook(
        code("import numpy as np\nimport xgboost as xgb", "setup"),
        code("rng = np.random.default_rng(0)\nX = rng.normal(size=(200, 3))\ny = (X[:, 0] + X[:, 1] > 0).astype(int)\n"
             "dtrain = xgb.DMatrix(X, label=y, feature_names=['a', 'b', 'c'])", "app:data"),
        code("print(dtrain.num_row(), dtrain.num_col(), dtrain.feature_names, int(dtrain.get_label().sum()))\n"
             "booster = xgb.train({'max_depth': 2, 'nthread': 1, 'seed': 0}, dtrain, num_boost_round=5)",
             "app:train"),
        code("pred = booster.predict(dtrain)\nprint(((pred > 0.5) == y).mean() > 0.9, pred[:3].round(4))",
             "app:score"))
    runs = both(nb)
    assert_ran(runs)
    assert stdout(runs, 2).startswith("200 3 ['a', 'b', 'c'] ")
    assert stdout(runs, 3).startswith("True [")


def test_pytorch_modules_and_tensors_ship(both: Any) -> None:
    pytest.importorskip("torch", reason="PyTorch is not installed here (a large download)")
    nb = notebook(
        code("import torch", "setup"),
        code("torch.manual_seed(0)\nnet = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())\n"
             "x = torch.ones(4, 3)", "app:make"),
        code("print(net(x).detach().sum().item() >= 0, x.shape, sum(p.numel() for p in net.parameters()))",
             "app:use"))
    runs = both(nb)
    assert_ran(runs)
    assert stdout(runs, 2) == "True torch.Size([4, 3]) 8\n"


def test_a_keras_model_ships(both: Any) -> None:
    pytest.importorskip("keras", reason="Keras/TensorFlow is not installed here (a large download)")
    nb = notebook(
        code("import numpy as np\nimport keras", "setup"),
        code("model = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(2)])\n"
             "x = np.ones((4, 3))", "app:make"),
        code("print(model.predict(x, verbose=0).shape, model.count_params())", "app:use"))
    runs = both(nb)
    assert_ran(runs)
    assert stdout(runs, 2) == "(4, 2) 8\n"


def test_a_root_tree_ships_as_its_path_not_its_metadata() -> None:
    uproot = pytest.importorskip("uproot", reason="needs uproot (the hep extra)")
    with uproot.open(EXAMPLES / "data" / "uproot-Zmumu.root") as file:
        tree = file["events"]
        out = io.BytesIO()
        serializers.pickler_class()(out, protocol=5).dump([tree, tree["px1"]])
        assert len(out.getvalue()) < 1000, "shipped by uproot's own pickling, not reopened by path"
        back, branch = pickle.loads(out.getvalue())
    assert (back.object_path, back.num_entries, branch.name) == ("/events;1", 2304, "px1")
    assert back.file.file_path == tree.file.file_path


@pytest.mark.parametrize("engine", ENGINES)
def test_a_serializer_registered_in_setup_ships_a_notebook_class(tmp_path: Path, engine: str) -> None:
    src = write(tmp_path / "nb.ipynb",
                code("import threading\nimport nbpipe.serializers\n\n"
                     "class Sensor:\n    def __init__(self, port):\n        self.port = port\n"
                     "        self.lock = threading.Lock()\n\n"
                     "nbpipe.serializers.register('__main__.Sensor', dump=lambda s: s.port, load=Sensor)",
                     "setup"),
                code("sensors = {'a': Sensor(7), 'b': [Sensor(8)]}", "app:make"),
                code("print(type(sensors['a']).__name__, sensors['a'].port, sensors['b'][0].port,"
                     " sensors['a'].lock.locked())", "app:use"))
    run = nbpipe.execute(src, workers=2, engine=engine)
    assert run.ok, {n: r.error for n, r in run.apps.items() if not r.status.ok}
    assert text_of(run.notebook.cells[[c.get("id") for c in run.notebook.cells].index(read(src).cells[2].id)]) \
        == "Sensor 7 8 False\n"

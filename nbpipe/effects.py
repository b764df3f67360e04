"""What calls do to the values they touch: the one table of known effects (SPEC §3).

The analysis (:mod:`nbpipe.names`) assumes that a method call may change its
receiver, wherever it appears (``top = stack.pop()`` changes ``stack``), and
that a plain function call changes nothing it is given. This table corrects
both assumptions for the calls it knows; the README shows it as one table.

- A method in :data:`PURE_METHODS` never changes its receiver, unless it is
  called with ``inplace=True`` (pandas).
- A function in :data:`ARGUMENT_MUTATORS` (by qualified name, after the
  notebook's imports are resolved: ``np.put`` is ``numpy.put``) changes its
  first argument; so does a method in :data:`METHOD_ARGUMENT_MUTATORS`,
  whatever its receiver (``np.add.at(x, i, 1)``, ``rng.shuffle(x)``).
- A call with ``out=x`` changes ``x``.
- A call on a module never changes the module's name (``plt.title()``,
  ``np.save()``, ``time.sleep()``): a name bound by ``import`` is no
  mutation target. Process state such modules hold is carried separately.
- The calls in :data:`NAMES_IN_STRINGS` read (or, for ``exec``, define) the
  names written in their literal string argument.
"""

from __future__ import annotations

__all__ = [
    "ARGUMENT_MUTATORS",
    "METHOD_ARGUMENT_MUTATORS",
    "NAMES_IN_STRINGS",
    "PURE_METHODS",
    "is_pure_method",
]

#: Methods that never change their receiver (unless called with ``inplace=True``).
PURE_METHODS: frozenset[str] = frozenset({
    # reductions and element-wise results (numpy, pandas, Python numbers)
    "all", "any", "argmax", "argmin", "argsort", "corr", "count", "cov", "cummax", "cummin",
    "cumprod", "cumsum", "describe", "diff", "dot", "idxmax", "idxmin", "max", "mean", "median",
    "min", "mode", "nlargest", "nsmallest", "nunique", "pct_change", "prod", "quantile", "round",
    "sem", "skew", "std", "sum", "unique", "value_counts", "var",
    # views and new objects (pandas methods with ``inplace=`` only count with inplace=True)
    "agg", "aggregate", "apply", "applymap", "assign", "astype", "between", "clip", "copy",
    "drop", "drop_duplicates", "dropna", "duplicated", "equals", "explode", "fillna", "filter",
    "flatten", "get", "groupby", "head", "index", "info", "interpolate", "isin", "isna",
    "isnull", "items", "iterrows", "itertuples", "keys", "mask", "melt", "memory_usage", "merge",
    "notna", "notnull", "pipe", "pivot", "pivot_table", "query", "rank", "ravel", "rename", "reorder_levels",
    "replace", "resample", "reset_index", "reshape", "rolling", "expanding", "sample",
    "select_dtypes", "set_index", "shift", "sort_index", "sort_values", "squeeze", "stack",
    "swapaxes", "tail", "take", "transpose", "unstack", "values", "where",
    # Python containers and strings (str, bytes and tuples never change)
    "decode", "difference", "encode", "endswith", "find", "format", "intersection", "isdisjoint",
    "issubset", "issuperset", "join", "lower", "lstrip", "rstrip", "split", "splitlines",
    "startswith", "strip", "symmetric_difference", "union", "upper", "contains",
    # conversion, display, plot and export
    "boxplot", "display", "hist", "item", "plot", "savefig", "show", "to_csv", "to_dict",
    "to_excel", "to_frame", "to_hdf", "to_html", "to_json", "to_latex", "to_list", "to_markdown",
    "to_numpy", "to_parquet", "to_pickle", "to_records", "to_sql", "to_string", "tofile",
    "tolist", "tobytes",
    # constructors called on a class (``dict.fromkeys``, ``pd.DataFrame.from_dict``)
    "from_bytes", "from_dict", "from_records", "fromhex", "fromkeys", "maketrans",
    # fitted models asked a question (fit, partial_fit, fit_transform do change them)
    "decision_function", "get_feature_names_out", "get_params", "inverse_transform", "predict",
    "predict_log_proba", "predict_proba", "score", "score_samples", "transform",
    # logging, regular expressions and paths
    "critical", "debug", "error", "exception", "info", "log", "warning",
    "findall", "finditer", "fullmatch", "group", "groups", "match", "search",
    "exists", "is_dir", "is_file", "joinpath", "read_bytes", "read_text", "with_name", "with_suffix",
})

#: Functions that change their first argument, by qualified name.
ARGUMENT_MUTATORS: frozenset[str] = frozenset({
    "builtins.next", "builtins.setattr", "builtins.delattr",
    "random.shuffle", "numpy.random.shuffle",
    "heapq.heappush", "heapq.heappop", "heapq.heapify", "heapq.heapreplace", "heapq.heappushpop",
    "bisect.insort", "bisect.insort_left", "bisect.insort_right",
    "numpy.copyto", "numpy.put", "numpy.put_along_axis", "numpy.place", "numpy.putmask",
    "numpy.fill_diagonal",
})

#: Methods that change their first argument, whatever they are called on:
#: any ufunc's ``at`` (``np.add.at(x, i, 1)``), a generator's ``shuffle``.
METHOD_ARGUMENT_MUTATORS: frozenset[str] = frozenset({"at", "shuffle"})

#: Calls whose literal string argument names variables: qualified function or
#: ``.method`` (on anything but a module) -> how to read the string.
#: "code": Python code (reads and defines); "expression": every name is read;
#: "at-names": only the ``@name`` references are read (pandas ``query``/``eval``).
NAMES_IN_STRINGS: dict[str, str] = {
    "builtins.eval": "code",
    "builtins.exec": "code",
    "pandas.eval": "expression",
    "numexpr.evaluate": "expression",
    ".query": "at-names",
    ".eval": "at-names",
}


def is_pure_method(method: str, inplace: bool) -> bool:
    """Whether calling ``obj.method(...)`` leaves ``obj`` as it was."""
    return method in PURE_METHODS and not inplace

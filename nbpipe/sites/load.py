"""Finding and validating site definitions (SPEC §5).

Sites come from, in this order (the first definition of a name wins):
``--sites FILE``, ``nbpipe.toml`` beside the notebook, ``nbpipe.toml`` in the
working directory, and ``[tool.nbpipe.sites.*]`` in the working directory's
``pyproject.toml``. The built-in ``local`` site comes last.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any

from ..errors import SiteError
from ..parse import valid_image

__all__ = ["ENGINES", "PROVIDERS", "RUNTIMES", "discover"]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENGINES = ("local", "parsl", "dask")
#: Parsl providers by the name a site file uses.
PROVIDERS = {
    "local": "LocalProvider",
    "slurm": "SlurmProvider",
    "pbspro": "PBSProProvider",
    "pbs": "PBSProProvider",
    "torque": "TorqueProvider",
    "lsf": "LSFProvider",
    "condor": "CondorProvider",
    "gridengine": "GridEngineProvider",
    "sge": "GridEngineProvider",
    "kubernetes": "KubernetesProvider",
}
RUNTIMES = ("podman", "docker", "apptainer", "singularity", "charliecloud", "shifter")

#: Keys each engine accepts, with the type each value must have.
_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "local": {"engine": str, "workers": int, "run_dir": str, "cache_dir": str, "containers": dict,
              "container": str, "batch": bool},
    "parsl": {"engine": str, "config": str, "provider": str, "provider_options": dict,
              "executor_options": dict, "label": str, "executors": dict, "run_dir": str, "cache_dir": str,
              "start_timeout": (int, float), "containers": dict, "container": str, "batch": bool},
    "dask": {"engine": str, "address": str, "workers": int, "run_dir": str, "cache_dir": str,
             "start_timeout": (int, float), "containers": dict, "container": str, "batch": bool},
}
#: Keys of a site's ``[containers]`` table: the runtime, more host paths to mount
#: (at the same paths), and more options for the runtime's command line.
_CONTAINER_KEYS: dict[str, type | tuple[type, ...]] = {"runtime": str, "mounts": list, "options": list}
_EXECUTOR_KEYS: dict[str, type | tuple[type, ...]] = {
    "provider": str, "provider_options": dict, "executor_options": dict}


def discover(notebook: Path | None = None, sites_file: Path | None = None,
             cwd: Path | None = None) -> list[tuple[str, dict[str, Any], Path]]:
    """Every site definition found, as ``(name, table, file)``, in precedence order."""
    cwd = Path.cwd() if cwd is None else cwd
    found: list[tuple[str, dict[str, Any], Path]] = []
    candidates: list[tuple[Path, bool]] = []
    if sites_file is not None:
        if not sites_file.exists():
            raise SiteError(f"{sites_file}: no such sites file")
        candidates.append((sites_file, False))
    if notebook is not None:
        candidates.append((notebook.resolve().parent / "nbpipe.toml", False))
    candidates.append((cwd.resolve() / "nbpipe.toml", False))
    candidates.append((cwd.resolve() / "pyproject.toml", True))
    seen: set[Path] = set()
    for path, in_pyproject in candidates:
        path = path.resolve()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        data = _read_toml(path)
        table = data.get("tool", {}).get("nbpipe", {}) if in_pyproject else data
        sites = table.get("sites", {})
        where = "tool.nbpipe.sites" if in_pyproject else "sites"
        if not isinstance(sites, dict):
            raise SiteError(f"{path}: {where}: must be a table of sites, one [{where}.NAME] each")
        for name, site in sites.items():
            if not isinstance(site, dict):
                raise SiteError(f"{path}: {where}.{name}: must be a table")
            validate(name, site, path, where)
            found.append((name, site, path))
    return found


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise SiteError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise SiteError(f"{path}: cannot read: {exc.strerror}") from None


def validate(name: str, site: dict[str, Any], path: Path, where: str = "sites") -> None:
    """Refuse a malformed site with one line naming the file, the key and the problem."""
    prefix = f"{path}: {where}.{name}"
    engine = site.get("engine")
    if engine is None:
        raise SiteError(f"{prefix}.engine: missing; set it to one of {', '.join(ENGINES)}")
    if engine not in ENGINES:
        raise SiteError(f"{prefix}.engine: unknown engine {engine!r}{_close(engine, ENGINES)}; "
                        f"one of {', '.join(ENGINES)}")
    _check_keys(prefix, site, _KEYS[engine])
    if engine == "parsl":
        has_config, has_provider = "config" in site, "provider" in site or "executors" in site
        if has_config == has_provider:
            raise SiteError(f"{prefix}: give either config = \"file.py:function\" or provider = "
                            f"\"{'|'.join(sorted(set(PROVIDERS)))}\" (with provider_options)")
        if has_config and ":" not in site["config"]:
            raise SiteError(f"{prefix}.config: {site['config']!r} must name a file and a function "
                            "returning a parsl Config, as \"sites/theta.py:config\"")
        if "provider" in site:
            _check_provider(f"{prefix}.provider", site["provider"])
        for label, executor in site.get("executors", {}).items():
            if not isinstance(executor, dict):
                raise SiteError(f"{prefix}.executors.{label}: must be a table")
            _check_keys(f"{prefix}.executors.{label}", executor, _EXECUTOR_KEYS)
            _check_provider(f"{prefix}.executors.{label}.provider", executor.get("provider", "local"))
    _check_keys(f"{prefix}.containers", site.get("containers", {}), _CONTAINER_KEYS)
    if "container" in site and not valid_image(site["container"]):
        raise SiteError(f"{prefix}.container: {site['container']!r} is not an image reference "
                        "(letters, digits and . _ / : @ + - only, not starting with '-')")
    for key in ("mounts", "options"):
        for value in site.get("containers", {}).get(key, []):
            if not isinstance(value, str):
                raise SiteError(f"{prefix}.containers.{key}: must be a list of strings, got {value!r}")
    runtime = site.get("containers", {}).get("runtime")
    if runtime is not None and runtime not in RUNTIMES:
        raise SiteError(f"{prefix}.containers.runtime: unknown runtime {runtime!r}"
                        f"{_close(str(runtime), RUNTIMES)}; one of {', '.join(RUNTIMES)}")
    if isinstance(site.get("workers"), int) and site["workers"] < 1:
        raise SiteError(f"{prefix}.workers: must be at least 1, got {site['workers']}")


def _check_keys(prefix: str, table: dict[str, Any], allowed: dict[str, type | tuple[type, ...]]) -> None:
    for key, value in table.items():
        if key not in allowed:
            raise SiteError(f"{prefix}.{key}: unknown key{_close(key, allowed)}; "
                            f"known keys: {', '.join(sorted(allowed))}")
        kind = allowed[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            shown = {"str": "a string", "int": "a whole number", "dict": "a table", "list": "a list",
                     "float": "a number"}
            raise SiteError(f"{prefix}.{key}: must be {shown.get(names, names)}, "
                            f"got {type(value).__name__} {value!r}")


def _check_provider(key: str, provider: Any) -> None:
    if provider not in PROVIDERS:
        raise SiteError(f"{key}: unknown provider {provider!r}{_close(str(provider), PROVIDERS)}; "
                        f"one of {', '.join(sorted(PROVIDERS))}")


def _close(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""

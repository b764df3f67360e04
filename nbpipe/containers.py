"""Containers: an app tagged ``container:IMAGE`` runs inside IMAGE (SPEC §8).

A :class:`Runtime` knows one container tool's command line: how to start a
long-lived process in an image with the notebook and run directories at the
same paths as on the host, how to find an image's digest, and how to stop
what it started. The registry :data:`RUNTIMES` maps the names a site may give
(``[sites.NAME.containers] runtime = ...``) to them; without one the first
tool on PATH is used.

Before anything runs, :func:`resolve` finds each app's image, checks that the
runtime and the image exist and that the image has what nbpipe's task runtime
needs (:data:`NEEDS`), and returns a :class:`Container` per app: plain values
that cross to the workers in the task spec. There the local executor starts
one container per image (:func:`launch_argv`) running the preloaded zygote,
which forks one child per app, as on the host.

Every command is an argv list; nothing passes through a shell.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import SiteError

__all__ = ["Container", "ContainerError", "NEEDS", "RUNTIMES", "Runtime", "container_name", "launch_argv",
           "probe_image", "resolve", "runtime_for"]

#: Where nbpipe's own package is mounted, read-only, inside every container: the
#: code that runs there is always the driver's version.
PACKAGE_MOUNT = "/opt/nbpipe-runtime"

#: What the image's ``python3`` must import: nbpipe's task runtime (import name ->
#: what to pip-install). nbpipe itself is mounted, so it need not be installed.
#: ipykernel on both engines: the ``ipython`` engine's shell compiles with its compiler.
NEEDS = {"papermill": "papermill", "IPython": "ipython", "ipykernel": "ipykernel", "nbformat": "nbformat",
         "nbclient": "nbclient", "cloudpickle": "cloudpickle"}

#: Variables of this machine's environment that reach the apps in a container (the
#: rest of its environment is the image's): the batch job's (its id is recorded),
#: the devices and threads a worker was given, the locale and time zone, nbpipe's own.
PASSED_ENV = ("SLURM_", "PBS_", "LSB_", "COBALT_", "FLUX_", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
              "HIP_VISIBLE_DEVICES", "ZE_AFFINITY_MASK", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "OPENBLAS_NUM_THREADS", "NBPIPE_", "LANG", "LC_", "TZ")

#: The oldest Python inside an image that nbpipe's runtime supports.
MIN_PYTHON = (3, 10)

#: Seconds a probe of an image may take (a first start may unpack layers).
PROBE_SECONDS = 120.0


class ContainerError(SiteError):
    """A runtime or an image cannot serve a ``container:`` app (exit 2, before anything runs)."""


@dataclass(frozen=True)
class Container:
    """Where a task runs when it runs in an image. Only plain values: it crosses processes."""

    runtime: str
    executable: str
    image: str
    digest: str
    mounts: tuple[str, ...] = ()
    gpus: int = 0
    options: tuple[str, ...] = ()
    #: the image's Python, ``major.minor``
    python: str = ""
    #: the user's home in the image cannot be written (a read-only image, a uid the image
    #: does not know): the apps get a fresh one in the run directory
    fresh_home: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Container:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @property
    def key(self) -> tuple[Any, ...]:
        """What makes two apps share one warm container."""
        return (self.runtime, self.executable, self.image, self.mounts, self.gpus, self.options)

    def here(self) -> Container:
        """This container with the runtime's executable as found on this machine: a worker
        may have it elsewhere than the driver (a module loaded on compute nodes only)."""
        if os.access(self.executable, os.X_OK):
            return self
        found = shutil.which(Path(self.executable).name)
        return Container(**{**self.to_dict(), "executable": found}) if found else self

    def describe(self) -> dict[str, Any]:
        """For the merged notebook's metadata and provenance."""
        return {"image": self.image, "digest": self.digest, "runtime": self.runtime}


@dataclass(frozen=True)
class Launch:
    """What a runtime needs to start a process in an image."""

    container: Container
    name: str  # a name for the container, where the runtime names them
    cwd: str
    env: dict[str, str] = field(default_factory=dict)
    #: labels for runtimes that keep them (``nbpipe.run``: the run directory's name)
    labels: dict[str, str] = field(default_factory=dict)


class Runtime:
    """One container tool. Subclasses give its command line."""

    name: ClassVar[str]
    #: executables that provide it, the first found on PATH wins
    executables: ClassVar[tuple[str, ...]]

    def argv(self, launch: Launch, command: list[str]) -> list[str]:
        raise NotImplementedError

    def digest(self, executable: str, image: str) -> str:
        """The image's content digest (``sha256:…``); ContainerError when it is missing."""
        raise NotImplementedError

    def stop(self, executable: str, name: str) -> None:
        """Remove what :meth:`argv` started under ``name`` and may have left running."""

    def remove_run(self, executable: str, run: str) -> None:
        """Remove what is left of the containers of run ``run`` (by its label)."""

    def prepare(self, container: Container) -> None:
        """Make the image ready for :meth:`argv`'s mounts, on the machine that starts it."""

    def missing_image(self, image: str) -> str:
        return f"image {image!r} not found"

    def failed_to_start(self, returncode: int) -> bool:
        """Whether a run that ended with ``returncode`` failed in the runtime, before
        the command in the image started (a bad option, a missing mount)."""
        return False

    #: Characters its bind option cannot carry in a path (it splits there).
    unbindable: ClassVar[str] = ""


class Podman(Runtime):
    name = "podman"
    executables = ("podman",)
    gpu_flags: ClassVar[tuple[str, ...]] = ("--device", "nvidia.com/gpu=all")

    def argv(self, launch: Launch, command: list[str]) -> list[str]:
        c = launch.container
        # --pull=never: the image was checked before the run; never fetch one mid-run.
        argv = [c.executable, "run", "--rm", "--interactive", "--pull=never", "--name", launch.name,
                # Host pids (the driver signals the apps' process groups), network and
                # shared memory: only the file system is the image's.
                "--pid=host", "--network=host", "--ipc=host", *self._user(),
                "--workdir", launch.cwd, "--entrypoint", command[0],
                "--label", "nbpipe=1", *(f for k, v in sorted(launch.labels.items())
                                         for f in ("--label", f"{k}={v}"))]
        for path in c.mounts:
            argv += _bind(path, path)
        argv += _bind(_package_dir(), f"{PACKAGE_MOUNT}/nbpipe", read_only=True)
        for key, value in sorted(launch.env.items()):
            argv += ["--env", f"{key}={value}"]
        if c.gpus:
            argv += list(self.gpu_flags)
        return [*argv, *c.options, c.image, *command[1:]]

    def _user(self) -> list[str]:
        if os.getuid() != 0 and self.name == "podman":
            return ["--userns=keep-id"]  # rootless: the invoking user, also inside
        return ["--user", f"{os.getuid()}:{os.getgid()}"]

    def digest(self, executable: str, image: str) -> str:
        done = _run([executable, "image", "inspect", "--format", "{{.Id}}", image])
        if done.returncode != 0:
            engine = _run([executable, "info"])  # a client without its engine finds no image either
            if engine.returncode != 0:
                raise ContainerError(
                    f"{self.name} cannot reach its engine ({_first_line(engine.stderr) or 'info failed'}); "
                    f"start the {self.name} service, or set containers.runtime in the site to another runtime")
            raise ContainerError(f"{self.missing_image(image)}: {_first_line(done.stderr)}; get it with "
                                 f"`{self.name} pull {image}` (or build it, e.g. `{self.name} build -t {image} .`)")
        ident = done.stdout.strip()
        return ident if ident.startswith("sha256:") else f"sha256:{ident}"

    def failed_to_start(self, returncode: int) -> bool:
        return returncode == 125  # the status both give to their own errors

    def stop(self, executable: str, name: str) -> None:
        _run([executable, "rm", "--force", "--time", "0", name] if self.name == "podman"
             else [executable, "rm", "--force", name])

    def remove_run(self, executable: str, run: str) -> None:
        left = _run([executable, "ps", "--all", "--quiet", "--filter", f"label=nbpipe.run={run}"]).stdout.split()
        if left:
            _run([executable, "rm", "--force", *left])


def _bind(source: str, target: str, read_only: bool = False) -> list[str]:
    """podman's and docker's mount of ``source`` at ``target``: ``--volume`` splits at
    ':', so a path with one (a folder named by its time) is given as a ``--mount``,
    whose comma-separated fields are CSV (a field with ',' or '"' is quoted)."""
    if ":" not in source + target:
        return ["--volume", f"{source}:{target}" + (":ro" if read_only else "")]
    fields = ["type=bind", f"source={source}", f"destination={target}", *(["readonly"] if read_only else [])]
    quoted = ['"' + f.replace('"', '""') + '"' if any(ch in f for ch in ',"') else f for f in fields]
    return ["--mount", ",".join(quoted)]


class Docker(Podman):
    name = "docker"
    executables = ("docker",)
    gpu_flags = ("--gpus", "all")


class Apptainer(Runtime):
    """apptainer (and singularity): a ``.sif`` file, a sandbox directory or ``docker://…``."""

    name = "apptainer"
    executables = ("apptainer", "singularity")
    unbindable = ":,"

    def argv(self, launch: Launch, command: list[str]) -> list[str]:
        c = launch.container
        argv = [c.executable, "exec", "--cleanenv", "--pwd", launch.cwd]
        for path in c.mounts:
            argv += ["--bind", f"{path}:{path}"]
        argv += ["--bind", f"{_package_dir()}:{PACKAGE_MOUNT}/nbpipe:ro"]
        for key, value in sorted(launch.env.items()):
            argv += ["--env", f"{key}={value}"]
        if c.gpus:
            argv.append("--nv")
        return [*argv, *c.options, c.image, *command]

    def digest(self, executable: str, image: str) -> str:
        if "://" in image:
            _, _, pinned = image.rpartition("@")
            return pinned if pinned.startswith("sha256:") else f"unpinned:{image}"
        return _path_digest(image, self.missing_image(image) + f"; build it with `{self.name} build`")


class Singularity(Apptainer):
    name = "singularity"
    executables = ("singularity", "apptainer")


class Charliecloud(Runtime):
    """charliecloud: ``ch-run`` on an image directory (or a name in its storage)."""

    name = "charliecloud"
    executables = ("ch-run",)
    unbindable = ":"

    def argv(self, launch: Launch, command: list[str]) -> list[str]:
        c = launch.container
        argv = [c.executable, "--cd", launch.cwd]
        if (Path(c.image) / "ch" / "environment").is_file():
            argv.append("--set-env")  # the image's own environment (PATH, ...), as ch-image wrote it
        for path in c.mounts:
            argv.append(f"--bind={path}:{path}")
        argv.append(f"--bind={_package_dir()}:{PACKAGE_MOUNT}/nbpipe")
        for key, value in sorted(launch.env.items()):
            argv.append(f"--set-env={key}={value}")
        return [*argv, *c.options, c.image, "--", *command]

    def prepare(self, container: Container) -> None:
        """ch-run binds only onto directories that exist in the (read-only) image:
        make the empty mount points, as ``ch-run --write`` would."""
        for target in (*container.mounts, f"{PACKAGE_MOUNT}/nbpipe"):
            point = Path(container.image) / target.lstrip("/")
            try:
                point.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ContainerError(f"image directory {container.image!r} has no mount point {target} and "
                                     f"it cannot be made ({exc.strerror}): mkdir -p {point}") from None

    def digest(self, executable: str, image: str) -> str:
        return _path_digest(image, self.missing_image(image) + "; unpack it with `ch-convert IMAGE DIR`")


class Shifter(Runtime):
    name = "shifter"
    executables = ("shifter",)

    def argv(self, launch: Launch, command: list[str]) -> list[str]:
        c = launch.container
        argv = [c.executable, f"--image={c.image}", f"--workdir={launch.cwd}"]
        for path in c.mounts:
            argv.append(f"--volume={path}:{path}")
        env = [f"--env={key}={value}" for key, value in sorted(launch.env.items())]
        return [*argv, *env, *c.options, "--", *command]

    def digest(self, executable: str, image: str) -> str:
        done = _run(["shifterimg", "lookup", image])
        if done.returncode != 0 or not done.stdout.strip():
            raise ContainerError(f"{self.missing_image(image)}; get it with `shifterimg pull {image}`")
        return f"sha256:{done.stdout.split()[0]}"


#: Runtime name -> its command line, as a site names it.
RUNTIMES: dict[str, Runtime] = {r.name: r for r in
                                (Podman(), Docker(), Apptainer(), Singularity(), Charliecloud(), Shifter())}

#: The order in which a runtime is looked for when the site names none.
DETECT_ORDER = ("podman", "docker", "apptainer", "singularity", "charliecloud", "shifter")


def runtime_for(name: str | None) -> tuple[Runtime, str]:
    """The runtime named (or the first on PATH) and the executable that provides it."""
    names = (name,) if name else DETECT_ORDER
    for candidate in names:
        runtime = RUNTIMES[candidate]
        for exe in runtime.executables:
            found = shutil.which(exe)
            if found:
                return runtime, found
    wanted = ", ".join(dict.fromkeys(e for n in names for e in RUNTIMES[n].executables))
    how = (f"install {name}, or set containers.runtime in the site to one that is installed" if name
           else "install one (podman is the simplest on a laptop, apptainer on most clusters), "
                "or set containers.runtime in the site")
    raise ContainerError(f"no container runtime found on PATH (looked for {wanted}); {how}")


def launch_argv(container: Container, name: str, cwd: str, command: list[str],
                env: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> list[str]:
    """The argv that runs ``command`` (``python3`` first) in the container, from ``cwd``."""
    runtime = RUNTIMES[container.runtime]
    passed = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV)}
    env = {**passed, "PYTHONPATH": PACKAGE_MOUNT, "PYTHONUNBUFFERED": "1", **(env or {})}
    return runtime.argv(Launch(container, name, cwd, env, labels or {}), command)


def remove_run_containers(containers: Any, run: str) -> None:
    """After a run: a batch job cancelled under a worker kills podman's monitor with it,
    which leaves the container in podman's records as running; remove such leftovers
    (on this machine: a worker node's records stay to its own podman)."""
    for runtime, executable in sorted({(c.runtime, c.executable) for c in containers}):
        RUNTIMES[runtime].remove_run(executable, run)


def prepare_launch(container: Container) -> None:
    RUNTIMES[container.runtime].prepare(container)


#: Numbers the containers this process starts: runs in threads of one process share it.
_NUMBERS = itertools.count(1)


def container_name(kind: str = "") -> str:
    """A name no other container of this machine's nbpipe runs has: ``nbpipe-[KIND-]PID-N-R``
    (R random: a stale container of a killed run with a recycled pid never blocks a new one)."""
    return f"nbpipe-{kind + '-' if kind else ''}{os.getpid()}-{next(_NUMBERS)}-{secrets.token_hex(3)}"


def stop_container(container: Container, name: str) -> None:
    RUNTIMES[container.runtime].stop(container.executable, name)


#: Run inside the image by :func:`probe_image`: its Python, and what it cannot import.
_PROBE = (
    "import importlib.util as u, json, sys\n"
    "need = json.loads(sys.argv[1])\n"
    "import os\n"
    "print(json.dumps({'python': list(sys.version_info[:2]),\n"
    "                  'missing': [d for m, d in need.items() if u.find_spec(m) is None],\n"
    "                  'home': os.access(os.path.expanduser('~'), os.W_OK)}))\n"
)


def probe_image(container: Container, cwd: str, needs: dict[str, str]) -> dict[str, Any]:
    """Start the image once, ask its ``python3`` what it has; ContainerError if it lacks what
    nbpipe's task runtime needs."""
    prepare_launch(container)
    name = container_name("probe")
    argv = launch_argv(container, name, cwd, ["python3", "-c", _PROBE, json.dumps(needs)])
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=PROBE_SECONDS)
    except subprocess.TimeoutExpired:
        stop_container(container, name)
        raise ContainerError(f"image {container.image!r}: python3 did not answer within "
                             f"{PROBE_SECONDS:g} s") from None
    except BaseException:  # a signal: the runtime's client is killed, the container it started is not
        stop_container(container, name)
        raise
    if RUNTIMES[container.runtime].failed_to_start(done.returncode):
        error = next((line for line in done.stderr.splitlines() if line.startswith("Error")),
                     _first_line(done.stderr))
        raise ContainerError(f"{container.runtime} could not start a container of image {container.image!r} "
                             f"({error}); check containers.options and containers.mounts in the site")
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ContainerError(_no_python(container, done)) from None
    python, missing = tuple(found["python"]), found["missing"]
    if python < MIN_PYTHON:
        raise ContainerError(f"image {container.image!r} has Python {python[0]}.{python[1]}; nbpipe's "
                             f"task runtime needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer")
    if missing:
        raise ContainerError(
            f"image {container.image!r} lacks what nbpipe's task runtime needs: {', '.join(missing)}; "
            f"add `RUN python3 -m pip install {' '.join(missing)}` to its Containerfile "
            "(README, Containers)")
    return {"python": f"{python[0]}.{python[1]}", "fresh_home": not found.get("home", True)}


def resolve(pipeline: Any, site: Any, cwd: Path) -> dict[str, Container]:
    """App -> the container it runs in, for the apps that run in one: the tag, else the
    notebook's ``container`` default, else the site's. Each image is found and probed
    once; a missing runtime or image, or an image without what the task runtime needs,
    is a :class:`ContainerError` naming the apps that asked for it."""
    default = site.options.get("container")
    wanted = {app: pipeline.apps[app].spec.container or default for app in pipeline.order}
    wanted = {app: image for app, image in wanted.items() if image}
    if not wanted:
        return {}
    conf = dict(site.options.get("containers", {}))
    by_image: dict[str, list[str]] = {}
    for app, image in wanted.items():
        by_image.setdefault(image, []).append(app)
    try:
        runtime, exe = runtime_for(conf.get("runtime"))
    except ContainerError as exc:
        raise ContainerError(f"{_asked(pipeline, list(wanted), next(iter(wanted.values())))}: {exc}") from None
    images: dict[str, Container] = {}
    for image, apps in by_image.items():
        try:
            mounts = _mounts(pipeline, apps, cwd, conf, runtime)
            found = Container(runtime.name, exe, image, runtime.digest(exe, image), mounts,
                              options=tuple(str(o) for o in conf.get("options", [])))
            images[image] = Container(**{**found.to_dict(), **probe_image(found, str(cwd), NEEDS)})
        except ContainerError as exc:
            raise ContainerError(f"{_asked(pipeline, apps, image)}: {exc}") from None
        if images[image].python != host_python():
            print(f"nbpipe: warning: image {image!r} has Python {images[image].python}, this machine "
                  f"{host_python()}: values shipped to and from its apps are pickles, which may not "
                  "load across Python versions", file=sys.stderr, flush=True)
    return {app: Container(**{**images[image].to_dict(), "gpus": pipeline.apps[app].spec.resources.gpus or 0})
            for app, image in wanted.items()}


def _mounts(pipeline: Any, apps: list[str], cwd: Path, conf: dict[str, Any], runtime: Runtime) -> tuple[str, ...]:
    """The host folders the apps of one image see: the notebook's, the site's ``mounts``,
    and the existing folders of ``inputs:`` and ``outputs:`` that lie outside the notebook's."""
    declared = [pattern for app in apps for pattern in (*pipeline.apps[app].spec.inputs,
                                                        *pipeline.apps[app].spec.outputs)]
    folders = [str(cwd), *(_mount(cwd, m) for m in conf.get("mounts", []))]
    for pattern in declared:
        folder = _folder_of(cwd, pattern)
        if folder is not None and not any(_within(folder, f) for f in folders):
            folders.append(folder)
    for path in folders:
        if any(ch in path for ch in runtime.unbindable):
            raise ContainerError(f"{runtime.name} cannot mount {path}: its bind option splits at "
                                 f"{' and '.join(repr(c) for c in runtime.unbindable)}; move the notebook "
                                 "(or the mount) to a folder without them, or use podman")
    return tuple(dict.fromkeys(folders))


def _folder_of(cwd: Path, pattern: str) -> str | None:
    """The deepest existing folder above the first glob character of a declared file."""
    head = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    path = (cwd / os.path.expanduser(head)).resolve()
    for folder in (path, *path.parents):
        if folder.is_dir():
            return None if folder == Path(folder.anchor) else str(folder)
    return None


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _asked(pipeline: Any, apps: list[str], image: str) -> str:
    """Who asked for ``image``: the cell and tag of the first app that has it as a tag,
    else the notebook's or the site's default."""
    names = f"app {apps[0]!r}" if len(apps) == 1 else "apps " + ", ".join(repr(n) for n in apps)
    for app in apps:
        spec = pipeline.apps[app].spec
        if "container" in spec.tags:
            index = spec.origin.get("container", spec.cells[0])
            cell = pipeline.parsed.cells[index]
            return f"cell {index} (id {cell.id}): tag {spec.tags['container']!r}: {names}"
    where = "the notebook's metadata" if pipeline.parsed.defaults.get("container") else "the site"
    return f"{names} (container {image!r} from {where})"


def _mount(cwd: Path, path: Any) -> str:
    return str((cwd / os.path.expanduser(str(path))).resolve())


def _no_python(container: Container, done: subprocess.CompletedProcess[str]) -> str:
    said = _first_line(done.stderr) or _first_line(done.stdout) or f"exit status {done.returncode}"
    return (f"image {container.image!r} has no working python3 ({said}); nbpipe's task runtime needs "
            f"Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer with {', '.join(NEEDS.values())} in "
            "the image (README, Containers: a Containerfile that adds them)")


def _package_dir() -> str:
    return str(Path(__file__).resolve().parent)


def _path_digest(image: str, missing: str) -> str:
    """A ``.sif`` file's SHA-256, or a digest of an image directory's tree (names,
    sizes, link targets and the contents of files up to 1 MB)."""
    path = Path(image).expanduser()
    if path.is_file():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return f"sha256:{h.hexdigest()}"
    if not path.is_dir():
        raise ContainerError(missing)
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            item = Path(root) / name
            h.update(str(item.relative_to(path)).encode() + b"\0")
            if item.is_symlink():
                h.update(os.readlink(item).encode())
            elif item.is_file() and item.stat().st_size <= 1 << 20:
                h.update(item.read_bytes())
            else:
                h.update(str(item.lstat().st_size).encode())
    return f"sha256:{h.hexdigest()}"


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(argv, 1, "", str(exc))


def _first_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def host_python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"

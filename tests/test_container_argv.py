"""The command lines of every container runtime, built as argv lists (no shell), checked
without running them: the runtimes this machine cannot install run in their own tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nbpipe.containers import PACKAGE_MOUNT, RUNTIMES, Container, ContainerError, launch_argv, runtime_for

HOSTILE = "img;touch /tmp/pwned $(id) `id` | sh"
COMMAND = ["python3", "-m", "nbpipe.execution.zygote", "numpy"]


def _container(runtime: str, image: str = "localhost/nbpipe-test", gpus: int = 0,
               options: tuple[str, ...] = ()) -> Container:
    return Container(runtime, f"/usr/bin/{runtime}", image, "sha256:" + "0" * 64,
                     ("/home/u/analysis", "/tmp/nbpipe-run-x"), gpus, options)


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


@pytest.mark.parametrize("runtime", ["podman", "docker"])
def test_podman_and_docker_mount_both_directories_at_the_same_paths_as_the_invoking_user(runtime: str) -> None:
    argv = launch_argv(_container(runtime), "nbpipe-1-1", "/home/u/analysis", COMMAND, {"MY": "1"})
    assert argv[:2] == [f"/usr/bin/{runtime}", "run"] and "--rm" in argv and "--interactive" in argv
    assert "--pull=never" in argv  # checked before the run; never fetched mid-run
    volumes = _pairs(argv, "--volume")
    assert "/home/u/analysis:/home/u/analysis" in volumes and "/tmp/nbpipe-run-x:/tmp/nbpipe-run-x" in volumes
    package = str(Path(__import__("nbpipe").__file__).parent)
    assert f"{package}:{PACKAGE_MOUNT}/nbpipe:ro" in volumes
    assert _pairs(argv, "--workdir") == ["/home/u/analysis"] and _pairs(argv, "--name") == ["nbpipe-1-1"]
    assert "--pid=host" in argv  # the driver signals the apps' process groups by host pid
    env = _pairs(argv, "--env")
    assert f"PYTHONPATH={PACKAGE_MOUNT}" in env and "MY=1" in env
    user = _pairs(argv, "--user")
    if runtime == "docker" or os.getuid() == 0:
        assert user == [f"{os.getuid()}:{os.getgid()}"]
    else:
        assert "--userns=keep-id" in argv
    # the image, then the command's arguments; the command itself is the entrypoint
    at = argv.index("localhost/nbpipe-test")
    assert argv[at + 1:] == COMMAND[1:] and _pairs(argv, "--entrypoint") == ["python3"]


@pytest.mark.parametrize("runtime, flags", [("podman", ["--device", "nvidia.com/gpu=all"]),
                                            ("docker", ["--gpus", "all"]),
                                            ("apptainer", ["--nv"]), ("singularity", ["--nv"])])
def test_gpus_map_to_the_runtime_flag(runtime: str, flags: list[str]) -> None:
    with_gpus = launch_argv(_container(runtime, gpus=2), "n", "/home/u/analysis", COMMAND)
    without = launch_argv(_container(runtime), "n", "/home/u/analysis", COMMAND)
    joined = " ".join(with_gpus)
    assert " ".join(flags) in joined and " ".join(flags) not in " ".join(without)


@pytest.mark.parametrize("image", ["/shared/images/root.sif", "/shared/sandbox", "docker://python:3.11"])
def test_apptainer_runs_a_sif_file_a_sandbox_or_a_docker_reference(image: str) -> None:
    argv = launch_argv(_container("apptainer", image), "n", "/home/u/analysis", COMMAND)
    assert argv[:3] == ["/usr/bin/apptainer", "exec", "--cleanenv"]
    assert _pairs(argv, "--pwd") == ["/home/u/analysis"]
    assert "/tmp/nbpipe-run-x:/tmp/nbpipe-run-x" in _pairs(argv, "--bind")
    at = argv.index(image)
    assert argv[at + 1:] == COMMAND


def test_charliecloud_runs_ch_run_on_an_image_directory() -> None:
    argv = launch_argv(_container("charliecloud", "/var/tmp/images/nbpipe-test"), "n", "/home/u/analysis",
                       COMMAND)
    assert argv[0] == "/usr/bin/charliecloud" and "--cd" in argv
    assert "--bind=/home/u/analysis:/home/u/analysis" in argv
    at = argv.index("/var/tmp/images/nbpipe-test")
    assert argv[at + 1] == "--" and argv[at + 2:] == COMMAND


def test_shifter_names_the_image_as_an_option() -> None:
    argv = launch_argv(_container("shifter", "docker:python:3.11"), "n", "/home/u/analysis", COMMAND)
    assert "--image=docker:python:3.11" in argv and argv[argv.index("--") + 1:] == COMMAND


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_hostile_values_stay_single_arguments(runtime: str) -> None:
    """An image, a path or an option with shell syntax is one argv element, never split or run."""
    container = Container(runtime, f"/usr/bin/{runtime}", HOSTILE, "sha256:x",
                          ("/home/u/my data; rm -rf ~",), 0, ("--label", "a b;c"))
    argv = launch_argv(container, "n", "/home/u/my data; rm -rf ~", COMMAND, {"X": "$(id)"})
    assert any(HOSTILE in arg for arg in argv)
    assert not any(arg in ("sh", "bash", "-c") for arg in argv[:argv.index(COMMAND[-1])] if arg != "-m")
    assert argv[-1] == "numpy" and "a b;c" in argv


def test_the_site_options_come_before_the_image() -> None:
    argv = launch_argv(_container("podman", options=("--security-opt", "label=disable")), "n", "/w", COMMAND)
    assert argv.index("--security-opt") < argv.index("localhost/nbpipe-test")


def test_a_missing_runtime_says_what_was_looked_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ContainerError) as info:
        runtime_for(None)
    assert "podman, docker, apptainer, singularity, ch-run, shifter" in str(info.value)
    with pytest.raises(ContainerError) as info:
        runtime_for("apptainer")
    assert "install apptainer" in str(info.value) and "apptainer, singularity" in str(info.value)


def test_a_runtime_is_found_by_any_of_its_executables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    singularity = tmp_path / "singularity"
    singularity.write_text("#!/bin/sh\n")
    singularity.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    runtime, exe = runtime_for("apptainer")
    assert runtime.name == "apptainer" and exe == str(singularity)
    assert runtime_for(None)[0].name == "apptainer"  # the first runtime found on PATH


def test_the_task_side_imports_without_the_compilers_dependencies() -> None:
    """Inside an image only nbpipe's package is mounted: what a task imports must not pull in
    networkx, nbconvert or the compiler's modules, which the image need not have."""
    import subprocess
    import sys

    probe = ("import sys\n"
             "import nbpipe.execution.zygote, nbpipe.execution.task, nbpipe.execution.local\n"
             "import papermill\n"
             "import nbpipe.execution.ipython, nbpipe.runtime, nbpipe.serializers, nbpipe.sharing\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('networkx', 'nbconvert')\n"
             "             or m in ('nbpipe.api', 'nbpipe.graph', 'nbpipe.compile', 'nbpipe.parse')))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_worker_finds_the_runtime_on_its_own_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The driver found podman in one place; a compute node may have it in another."""
    podman = tmp_path / "podman"
    podman.write_text("#!/bin/sh\n")
    podman.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    container = Container("podman", "/opt/driver-only/bin/podman", "img", "sha256:x")
    assert container.here().executable == str(podman)
    found = Container("podman", str(podman), "img", "sha256:x")
    assert found.here() is found
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert container.here().executable == "/opt/driver-only/bin/podman"  # the error will name it


def test_the_batch_jobs_variables_reach_the_container_and_others_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    env = _pairs(launch_argv(_container("podman"), "n", "/w", COMMAND), "--env")
    assert "SLURM_JOB_ID=4242" in env and "CUDA_VISIBLE_DEVICES=1" in env
    assert not any(e.startswith("AWS_") for e in env)


@pytest.mark.parametrize("runtime, folder", [("apptainer", "run:2024-05-01"), ("apptainer", "a,b"),
                                             ("charliecloud", "run:2024-05-01")])
def test_a_folder_a_runtime_cannot_bind_is_refused_before_anything_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime: str, folder: str) -> None:
    from nbbuild import code, write

    from nbpipe import api

    work = tmp_path / folder
    work.mkdir()
    exe = tmp_path / "bin" / RUNTIMES[runtime].executables[0]
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexit 1\n")  # never reached: the path is refused first
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}:{os.environ['PATH']}")
    (work / "nbpipe.toml").write_text(f"[sites.x]\nengine = 'local'\n[sites.x.containers]\nruntime = '{runtime}'\n")
    src = write(work / "nb.ipynb", code("x = 1", "app:a", "container:/images/x.sif"))
    with pytest.raises(ContainerError) as info:
        api.check(src, site="x")
    assert f"{runtime} cannot mount {work}" in str(info.value) and "'a'" in str(info.value)


def test_podman_containers_carry_the_runs_label() -> None:
    argv = launch_argv(_container("podman"), "n", "/w", COMMAND, labels={"nbpipe.run": "nbpipe-run-abc"})
    assert "nbpipe.run=nbpipe-run-abc" in _pairs(argv, "--label") and "nbpipe=1" in _pairs(argv, "--label")

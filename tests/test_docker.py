"""docker/ cannot run here (no Docker engine): parse its files and check that they are wired to what exists.

Every command a service runs exists with the flags it passes (the click commands themselves), every s3:// URL
names the bucket the one-shot bucket service creates, the services that open it have credentials, depends_on
points at real services, and the image's torch satisfies pyproject's pin.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from flair_lake.cli import main

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yml").read_text())
SERVICES = COMPOSE["services"]
AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def _env(svc: dict) -> dict:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return {k: None if v is None else str(v) for k, v in env.items()}


def _command(svc: dict) -> list[str]:
    cmd = svc.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _depends(svc: dict) -> dict:
    deps = svc.get("depends_on") or {}
    return {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps


def _words(svc: dict) -> list[str]:
    """Every word the service runs: command words, and the words of a `sh -c` script."""
    words = _command(svc)
    if svc.get("entrypoint", [None])[-1:] == ["-c"]:
        words = [w for script in words for w in shlex.split(script)]
    return words


def _default(value: str) -> str:
    """${VAR:-default} -> default, as Compose resolves it with VAR unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def _flags_ok(cmd: click.Command, args: list[str], where: str) -> None:
    """Every --flag is an option of `cmd`, options that take a value get one, positionals fit its arguments."""
    options = {o: p for p in cmd.params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts}
    positional, it = [], iter(args)
    for a in it:
        if a.startswith("--"):
            name, _, inline = a.partition("=")
            assert name in options, f"{where}: {cmd.name} has no {name}"
            if not options[name].is_flag and not inline:
                value = next(it, None)
                assert value is not None and not value.startswith("--"), f"{where}: {name} needs a value"
        else:
            positional.append(a)
    arguments = [p for p in cmd.params if isinstance(p, click.Argument)]
    assert len(positional) <= len(arguments) or any(p.nargs == -1 for p in arguments), (where, positional)


def _script_command(path: Path) -> click.Command:
    spec = importlib.util.spec_from_file_location(f"_docker_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _bucket_service() -> tuple[str, set[str]]:
    made = {}
    for name, svc in SERVICES.items():
        words = _words(svc)
        for i in range(len(words) - 1):
            if words[i:i + 2] == ["mc", "mb"]:
                made.setdefault(name, set()).update(
                    w.split("/", 1)[1].split("/")[0] for w in words[i + 2:] if "/" in w and not w.startswith("-"))
    assert len(made) == 1, f"exactly one service creates the bucket: {made}"
    return next(iter(made.items()))


def _s3_users() -> dict[str, set[str]]:
    """Service -> buckets of the s3:// URLs it passes."""
    return {name: {m.group(1) for w in _command(svc) for m in re.finditer(r"s3://([^/\s]+)", w)}
            for name, svc in SERVICES.items() if any("s3://" in w for w in _command(svc))}


def _needs(name: str, seen: set[str] | None = None) -> set[str]:
    """Every service `name` depends on, transitively."""
    seen = set() if seen is None else seen
    for dep in _depends(SERVICES[name]):
        if dep not in seen:
            seen.add(dep)
            _needs(dep, seen)
    return seen


def test_compose_wires_scheduler_workers_and_store():
    assert {"scheduler", "worker", "s3", "ingest", "filter", "trainer"} <= set(SERVICES)
    for name in ("ingest", "filter"):
        cmd = _command(SERVICES[name])
        assert cmd[cmd.index("--scheduler") + 1] == "tcp://scheduler:8786", name
    worker = SERVICES["worker"]
    assert _command(worker)[:3] == ["dask", "worker", "tcp://scheduler:8786"]
    assert worker["deploy"]["replicas"] == 2
    from pipelines.cluster import MALLOC_ENV

    env = _env(worker)
    assert all(env.get(k) == v for k, v in MALLOC_ENV.items()), env
    assert env.get("BLOSC_NTHREADS") == "1"


def test_every_command_exists_with_its_flags():
    import distributed.cli.dask_scheduler
    import distributed.cli.dask_worker

    dask_cmds = {"scheduler": distributed.cli.dask_scheduler.main, "worker": distributed.cli.dask_worker.main}
    checked = set()
    for name, svc in SERVICES.items():
        cmd = _command(svc)
        if not cmd or "image" in svc and "build" not in svc:  # third-party images (minio, mc): checked elsewhere
            continue
        if cmd[0] == "flair-lake":
            command = main.get_command(click.Context(main), cmd[1])
            assert command is not None, f"{name}: no flair-lake {cmd[1]}"
            _flags_ok(command, cmd[2:], name)
        elif cmd[0] == "python":
            script = REPO / cmd[1]
            assert script.is_file() and script.parent.name == "train", (name, cmd[1])
            _flags_ok(_script_command(script), cmd[2:], name)
        elif cmd[0] == "dask":
            _flags_ok(dask_cmds[cmd[1]], cmd[2:], name)
        else:
            raise AssertionError(f"service {name}: unknown command {cmd}")
        checked.add(cmd[0])
    assert checked >= {"flair-lake", "dask"}, checked  # python: a train/*.py shim, when one is used


def test_s3_urls_name_the_created_bucket_and_users_have_credentials():
    bucket_svc, buckets = _bucket_service()
    users = _s3_users()
    assert {"ingest", "filter", "trainer"} <= set(users), users
    # the Dask workers open the lake inside their tasks: they need the credentials too
    openers = set(users) | {n for n, s in SERVICES.items() if _command(s)[:2] == ["dask", "worker"]}
    for name in openers:
        assert set(users.get(name, set())) <= buckets, \
            f"{name} uses buckets {users[name]}, {bucket_svc} makes {buckets}"
        env = _env(SERVICES[name])
        assert all(env.get(k) for k in AWS_VARS), f"{name} lacks {[k for k in AWS_VARS if not env.get(k)]}"
        host = re.match(r"https?://([^:/]+)", env["AWS_ENDPOINT_URL"]).group(1)
        assert host in SERVICES, f"{name}: endpoint {host} is no service"
        if name in users:
            assert bucket_svc in _needs(name), f"{name} uses s3:// but does not wait for {bucket_svc}"
    # the bucket service logs in with the same credentials (its script reads the AWS_* variables)
    store_env = _env(SERVICES[host])
    creds = {(e.get("AWS_ACCESS_KEY_ID"), e.get("AWS_SECRET_ACCESS_KEY"))
             for e in map(_env, map(SERVICES.get, openers | {bucket_svc}))}
    assert creds == {(store_env["MINIO_ROOT_USER"], store_env["MINIO_ROOT_PASSWORD"])}, creds


def test_depends_on_targets_exist_with_valid_conditions():
    bucket_svc, _ = _bucket_service()
    for name, svc in SERVICES.items():
        for dep, spec in _depends(svc).items():
            assert dep in SERVICES and dep != name, f"{name} depends on unknown {dep}"
            cond = spec.get("condition", "service_started")
            assert cond in DEPENDS_CONDITIONS, (name, dep, cond)
            if "healthcheck" in SERVICES[dep]:
                assert cond == "service_healthy", f"{name} should wait for {dep} to be healthy, not {cond}"
            else:
                assert cond != "service_healthy", f"{name} waits for {dep} healthy, which has no healthcheck"
            if dep == bucket_svc or _command(SERVICES[dep])[:1] == ["flair-lake"]:  # one-shot steps
                assert cond == "service_completed_successfully", f"{name} should wait for {dep} to finish"
    for name in ("ingest", "filter"):  # they submit to the scheduler: wait for it (transitively is enough)
        assert {"scheduler", "worker"} <= _needs(name), name
    assert "filter" in _needs("trainer")


def test_relative_paths_resolve_inside_the_repo():
    head = (DOCKER / "compose.yml").read_text().split("services:")[0]
    assert "docker compose -f docker/compose.yml" in head and "relative" in head.lower()
    for name, svc in SERVICES.items():
        if "build" in svc:
            assert (DOCKER / svc["build"]["context"]).resolve() == REPO, name
            assert (DOCKER / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile"
        for vol in svc.get("volumes", []):
            host = _default(vol).split(":")[0]
            if host.startswith("."):
                assert host.startswith("../"), f"{name}: {vol} would land under docker/"
                assert (DOCKER / host).resolve().parent == REPO, (name, vol)


def _dockerfile() -> str:
    """The Dockerfile with continuation lines joined and ARG defaults substituted."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.MULTILINE))
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def _torch_of_image(text: str) -> Version:
    base = re.search(r"^FROM (\S+)", text, re.MULTILINE).group(1)
    if base.startswith("pytorch/pytorch:"):  # tags are <torch>-cuda<x>-cudnn<y>-runtime
        return Version(base.split(":")[1].split("-")[0])
    pins = re.findall(r"[\"']?torch==([\w.+]+)", text)
    assert pins, f"{base} brings no torch and the Dockerfile pins none"
    return Version(pins[0])


def test_dockerfile_torch_and_python_satisfy_pyproject():
    text = _dockerfile()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch = next(Requirement(d) for d in project["dependencies"] if Requirement(d).name == "torch")
    version = _torch_of_image(text)
    assert torch.specifier.contains(version), f"image torch {version} outside pyproject's {torch.specifier}"
    base = re.search(r"^FROM (\S+)", text, re.MULTILINE).group(1)
    if base.startswith("python:"):
        py = Version(re.match(r"\d+\.\d+", base.split(":")[1]).group(0))
        assert py in Requirement(f"python{project['requires-python']}").specifier, base
    # installed normally, with its dependencies and the extras the services need
    assert "--no-deps" not in text
    extras = re.search(r"pip install .*\"?\.\[([\w,]+)\]", text).group(1).split(",")
    assert {"s3", "fast"} <= set(extras) <= set(project["optional-dependencies"])


@pytest.mark.parametrize("part", ["pyproject.toml", "README.md", "flair_lake", "pipelines", "train"])
def test_dockerfile_copies_what_the_commands_need(part):
    text = _dockerfile()
    copied = {src for line in re.findall(r"^COPY (.+)", text, re.MULTILINE) for src in line.split()[:-1]}
    assert part in copied, part
    ignore = DOCKER / "Dockerfile.dockerignore"
    if ignore.exists():  # BuildKit's per-Dockerfile ignore file: what is copied must be let through
        lines = ignore.read_text().split()
        assert "*" not in lines or f"!{part}" in lines, part


def test_torch_check_reads_both_kinds_of_base():
    assert _torch_of_image("FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime\n") == Version("2.5.1")
    assert _torch_of_image('FROM python:3.11-slim\nRUN pip install "torch==2.14.1" .\n') == Version("2.14.1")
    torch = Requirement("torch>=2.13,<2.15")
    assert not torch.specifier.contains(_torch_of_image("FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime\n"))

"""docker/ cannot run here (no Docker engine): check the files parse and every command they run exists."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from flair_lake.cli import main

DOCKER = Path(__file__).resolve().parents[1] / "docker"
sys.path.insert(0, str(DOCKER.parent))  # train/ scripts


def _commands():
    compose = yaml.safe_load((DOCKER / "compose.yml").read_text())
    for name, svc in compose["services"].items():
        if "command" in svc:
            yield name, svc["command"]


def test_compose_parses_and_wires_the_services():
    compose = yaml.safe_load((DOCKER / "compose.yml").read_text())
    assert {"scheduler", "worker", "s3", "ingest", "filter", "trainer"} <= set(compose["services"])
    for name in ("ingest", "filter"):
        assert "tcp://scheduler:8786" in compose["services"][name]["command"]
    from pipelines.cluster import MALLOC_ENV

    env = compose["services"]["worker"]["environment"]
    assert all(env[k] == v for k, v in MALLOC_ENV.items())


def test_every_command_exists_in_the_package():
    repo = DOCKER.parent
    for name, cmd in _commands():
        if cmd[0] == "flair-lake":
            res = CliRunner().invoke(main, [cmd[1], "--help"])
            assert res.exit_code == 0, (name, res.output)
            opts = [c.split("=")[0] for c in cmd[2:] if c.startswith("--")]
            assert all(o in res.output for o in opts), (name, opts)
        elif cmd[0] == "python":
            assert (repo / cmd[1]).exists(), (name, cmd[1])
            from train.fit import main as fit_main

            help_text = CliRunner().invoke(fit_main, ["--help"]).output
            assert all(o in help_text for o in cmd[2:] if o.startswith("--")), name
        elif cmd[0] == "dask":
            import distributed.cli.dask_scheduler  # noqa: F401  the entry points the image installs
            import distributed.cli.dask_worker  # noqa: F401
        elif name != "s3":
            raise AssertionError(f"service {name}: unknown command {cmd}")


def test_dockerfile_copies_what_the_commands_need():
    text = (DOCKER / "Dockerfile").read_text()
    for part in ("flair_lake", "pipelines", "train", "pyproject.toml"):
        assert f"COPY {part}" in text or part in shlex.split(text.replace("\\\n", " ")), part
    assert "FROM pytorch/pytorch" in text and "cuda" in text

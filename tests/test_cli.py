"""The ``flair-lake`` command line: one group, plugin commands, shared options, checks before any data is read."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import click
from click.testing import CliRunner

from flair_lake.cli import ENTRY_POINT_GROUP, PluginGroup, main
from flair_lake.config import FilterConfig

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"synth", "ingest", "filter", "info", "validate", "preview", "stats", "train", "evaluate", "predict",
            "report", "map", "experiment"}


def test_help_lists_every_command_without_importing_the_pipelines():
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0, res.output
    listed = {line.split()[0] for line in res.output.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == COMMANDS
    assert set(main.plugins()) >= {"ingest", "filter", "map", "experiment"}  # entry points of the installed package
    code = ("import sys; from flair_lake.cli import main; main(['--help'], standalone_mode=False); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pipelines', 'torch', 'dask', 'zarr')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip().splitlines()[-1] == "['pipelines', 'pipelines.commands']"


def test_the_library_never_imports_the_pipelines():
    offenders = []
    for path in sorted((REPO / "flair_lake").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] == "pipelines"]
    assert not offenders, offenders


def test_a_plugin_that_cannot_be_imported_says_so():
    group = PluginGroup(name="g", entry_point_group=ENTRY_POINT_GROUP)
    group._entry_points = {"bad": EntryPoint(name="bad", value="no_such_module_here:cmd", group=ENTRY_POINT_GROUP)}
    assert group.list_commands(click.Context(group)) == ["bad"]
    res = CliRunner().invoke(group, ["bad", "--anything"])
    assert res.exit_code == 1 and "the command bad (no_such_module_here:cmd) cannot be loaded" in res.output
    assert "ModuleNotFoundError" in res.output


def test_model_is_checked_before_any_data_is_read(tmp_path):
    from flair_lake.config import MODEL_NAMES
    from flair_lake.models import MODELS

    assert MODEL_NAMES == tuple(MODELS)
    missing = str(tmp_path / "missing.zarr")
    res = CliRunner().invoke(main, ["train", "--lake", missing, "--model", "resnet50"])
    assert res.exit_code == 2 and "Invalid value for '--model'" in res.output and "no lake" not in res.output
    for model in MODEL_NAMES:  # a known model gets as far as the lake
        res = CliRunner().invoke(main, ["train", "--lake", missing, "--model", model])
        assert res.exit_code == 1 and "no lake at" in res.output, res.output


def test_ranges_are_checked_by_the_parser(tmp_path):
    lake = ["--lake", str(tmp_path / "missing.zarr")]
    for args in (["train", *lake, "--workers", "-1"], ["train", *lake, "--batch-size", "0"],
                 ["train", *lake, "--epochs", "0"], ["train", *lake, "--patience", "0"],
                 ["train", *lake, "--max-batches", "0"], ["evaluate", *lake, "--ckpt", "x.pt", "--batch-size", "0"],
                 ["predict", *lake, "--ckpt", "x.pt", "--out", "p", "--workers", "-2"],
                 ["evaluate", *lake, "--ckpt", "x.pt", "--examples", "-1"],
                 ["ingest", "raw", lake[1], "--workers", "0"], ["filter", lake[1], "--workers", "0"],
                 ["info", lake[1], "--storage-option", "novalue"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and "Invalid value" in res.output, (args, res.output)


def test_filter_preset_takes_agreeing_options_and_names_a_contradiction(tmp_path):
    missing = str(tmp_path / "missing.zarr")
    for agreeing in (["--monthly"], ["--cloud", "0.5", "--prob", "60", "--combine", "sum", "--reducer", "mean"]):
        res = CliRunner().invoke(main, ["filter", missing, "--preset", "baseline", *agreeing])
        assert res.exit_code == 1 and "no lake at" in res.output, res.output  # accepted: it went on to the lake
    res = CliRunner().invoke(main, ["filter", missing, "--preset", "baseline", "--cloud", "0.6"])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == ("error: --cloud 0.6 contradicts --preset baseline (which uses --cloud 0.5); "
                                  "drop one")


def test_storage_options_reach_the_command(tmp_path):
    missing = str(tmp_path / "missing.zarr")
    res = CliRunner().invoke(main, ["info", missing, "--storage-option", "anon=true"])
    assert res.exit_code == 1 and "no lake at" in res.output


def test_info_describes_each_view(monthly_lake):
    res = CliRunner().invoke(main, ["info", monthly_lake])
    assert res.exit_code == 0, res.output
    cfg = FilterConfig(monthly=True)
    assert f"  {cfg.view_name()} (latest): {cfg.describe()}; complete" in res.output


def test_python_m_runs_the_group():
    res = subprocess.run([sys.executable, "-m", "flair_lake.cli", "--help"], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0 and "ingest" in res.stdout and "train" in res.stdout


def test_option_defaults_are_read_from_config():
    """No option of a command declares a literal default: each one is read from flair_lake.config."""
    sources = [*sorted((REPO / "flair_lake" / "cli").glob("*.py")), REPO / "pipelines" / "commands.py"]
    literal = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("option", "argument"):
                for kw in node.keywords:
                    if kw.arg == "default" and isinstance(kw.value, ast.Constant) and kw.value.value is not None:
                        literal.append(f"{path.name}:{node.lineno} {ast.unparse(kw.value)}")
    assert not literal


def test_evaluation_defaults_are_the_config_s():
    import inspect

    from flair_lake import config
    from flair_lake.training.evaluate import evaluate

    def defaults(name: str) -> dict:
        return {p.name: p.default for p in main.get_command(click.Context(main), name).params}

    ev = config.EvaluateConfig()
    for name in ("evaluate", "predict"):
        assert defaults(name)["split"] == ev.split and defaults(name)["batch_size"] == ev.batch_size
    assert defaults("evaluate")["examples"] == ev.examples
    assert defaults("preview")["seed"] == config.PREVIEW_SEED and defaults("synth")["preset"] == config.SYNTH_PRESET
    signature = inspect.signature(evaluate).parameters
    assert {k: signature[k].default for k in ("split", "batch_size", "examples", "probabilities", "tta")} == {
        "split": ev.split, "batch_size": ev.batch_size, "examples": ev.examples, "probabilities": ev.probabilities,
        "tta": ev.tta}

"""Report what ``flair-lake validate`` found and did, and the commands that rebuild what it names.

:class:`ValidationReport` holds the problems (one line each), the repairs and the next commands; the helpers
here write the ingest command that resumes a run and the filter command that rebuilds a view.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

import numpy as np

from flair_lake import schema
from flair_lake.config import FilterConfig
from flair_lake.errors import EXIT_INVALID, FlairLakeError, UsageError
from flair_lake.raw.names import patch_name

EXAMPLE_IDS = 5  # patch ids quoted per problem


@dataclass
class ValidationReport:
    """The outcome of :func:`validate`: the checks run, the problems found (one line each) and the repairs."""

    lake: str
    deep: bool = False
    repair: bool = False
    checks: int = 0
    problems: list[str] = field(default_factory=list)
    shards_decoded: int = 0
    # per problem: how --repair resolves it: ("shard", s), ("view_shard", view, s), ("meta", path): repaired;
    # ("ingest", raw), ("filter", view): resolved by the command printed next; None: by hand only
    actions: list[tuple | None] = field(default_factory=list, repr=False)
    repaired: list[str] = field(default_factory=list)
    next_commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: int = 0  # repairs that were refused or failed
    stopped: str = ""  # why the checks stopped early

    @property
    def ok(self) -> bool:
        """Return True when no problem was found."""
        return not self.problems

    @property
    def resolved(self) -> bool:
        """Return True when ``repair`` ran and every problem was repaired or is resolved by the next commands."""
        return self.repair and not self.failed and all(a is not None for a in self.actions)

    @property
    def exit_code(self) -> int:
        """Return 0 when the lake is sound or fully repaired, :data:`EXIT_INVALID` otherwise."""
        return 0 if self.ok or self.resolved else EXIT_INVALID

    def check(self, ok: bool, problem: str, action: tuple | None = None) -> bool:
        """Count a check; record ``problem`` (and how ``repair`` resolves it) when it failed. Return ``ok``."""
        self.checks += 1
        if not ok:
            self.problems.append(problem)
            self.actions.append(action)
        return ok

    def lines(self) -> list[str]:
        """Return the human summary: a verdict, one line per problem, then the repairs and the next commands."""
        scope = f"{self.checks} checks" + (f", {self.shards_decoded} shards decoded" if self.deep else "")
        scope += f"; {self.stopped}" if self.stopped else ""
        if self.ok:
            out = [f"{self.lake} is sound ({scope})" + ("; nothing to repair" if self.repair else "")]
        else:
            out = [f"{self.lake}: {len(self.problems)} problem(s) ({scope}):"] + [f"  {p}" for p in self.problems]
        if self.repair and self.problems:
            left = sum(a is None for a in self.actions)
            out += self.repaired or ["repaired nothing"]
            out += [f"note: {n}" for n in self.notes]
            if left:
                out.append(f"{left} problem(s) above need a manual repair (their fix)")
            out += [f"next: {cmd}" for cmd in self.next_commands]
        return out


def patch_ids(ids: np.ndarray) -> str:
    """Return a short list of patch ids such as ``IMG_000001, IMG_000002 (+3 more)``."""
    ids = np.asarray(ids).ravel()
    head = ", ".join(patch_name(i) for i in ids[:EXAMPLE_IDS])
    return head + (f" (+{ids.size - EXAMPLE_IDS} more)" if ids.size > EXAMPLE_IDS else "")


def ingest_command(lake: str, run: dict, storage_options: dict | None = None) -> str:
    """Return the ingest command that resumes ``run`` (and the other running runs), with its tree's options."""
    opts = "".join(f" --{k} {shlex.quote(run[k])}" for k in ("metadata", "centroids") if run.get(k))
    return (f"flair-lake ingest {shlex.quote(run.get('raw', 'RAW'))} {shlex.quote(lake)}{opts}"
            f"{storage_flags(storage_options)}")


def filter_command(lake: str, name: str, params: dict, *, overwrite: bool = False,
                   storage_options: dict | None = None) -> str:
    """Return the command that rebuilds (resumes, extends) the view ``name`` from its recorded params.

    Args:
        lake: the lake's path or URL (quoted here for the shell).
        name: the view's name.
        params: the view's ``params`` attribute.
        overwrite: rebuild the view from scratch (``--overwrite``).
        storage_options: the object store's options (secrets elided, :func:`storage_flags`).

    A config no ``flair-lake filter`` options give (:meth:`FilterConfig.to_flags`) is rebuilt by a Python call.
    """
    name = schema.view_name_of(name)[0]  # a generation is rebuilt under its view's name
    try:
        flags = filter_flags(name, params)
    except UsageError:
        public = {k: v for k, v in (storage_options or {}).items() if not _secret(k)}
        code = (f"from flair_lake.config import FilterConfig; from pipelines.filter import run_filter; "
                f"run_filter({lake!r}, FilterConfig.from_params({params!r}), name={name!r}"
                f"{', overwrite=True' if overwrite else ''}"
                f"{f', storage_options={public!r}' if public else ''})")
        return f"python -c {shlex.quote(code)}"
    again = " --overwrite" if overwrite and not flags.endswith(" --overwrite") else ""
    return f"flair-lake filter {shlex.quote(lake)} {flags}{again}{storage_flags(storage_options)}"


def filter_flags(name: str, params: dict) -> str:
    """Return the ``flair-lake filter`` options that rebuild the view ``name`` from its recorded params.

    ``--name`` is added when ``name`` is not the config's default name. Params this version cannot read give
    ``--name NAME --overwrite`` (the view rebuilt with the default parameters).

    Raises:
        UsageError: no options give the recorded config (:meth:`FilterConfig.to_flags`).
    """
    try:
        cfg = FilterConfig.from_params(params)
    except (TypeError, FlairLakeError):
        return f"--name {name} --overwrite"
    flags = shlex.join(cfg.to_flags())
    return flags + ("" if cfg.view_name() == name else f" --name {shlex.quote(name)}")


def _secret(key: str) -> bool:
    """Return True for an object-store option that must not be printed (credentials)."""
    return any(w in key.lower() for w in ("secret", "key", "token", "password"))


def storage_flags(storage_options: dict | None) -> str:
    """Return the ``--storage-option`` flags of a command, secrets elided."""
    return "".join(f" --storage-option {shlex.quote(f'{k}={v}')}" if not _secret(k) else f" --storage-option {k}=..."
                   for k, v in (storage_options or {}).items())

"""FilterConfig's command-line round trip: from_flags, to_flags, view_name, from_params, describe."""

from __future__ import annotations

import dataclasses
import json

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flair_lake.cli import main
from flair_lake.config import CODECS, COMBINE_RULES, FILTER_FLAGS, REDUCERS, FilterConfig
from flair_lake.errors import UsageError


def parse_filter_args(args: list[str]) -> FilterConfig:
    """Return the FilterConfig ``flair-lake filter ARGS`` would run, parsed by the command itself (nothing runs)."""
    cmd = main.get_command(click.Context(main), "filter")
    with cmd.make_context("filter", list(args)) as ctx:
        p = ctx.params
    return FilterConfig.from_flags(preset=p["preset"], codec=p["codec"], **{k: p[k] for k in FILTER_FLAGS})


# every config some combination of `flair-lake filter` options gives
flag_configs = st.one_of(
    st.builds(FilterConfig, max_cover=st.floats(0, 1), min_prob=st.floats(0, 100),
              combine=st.sampled_from(COMBINE_RULES), monthly=st.booleans(), reducer=st.sampled_from(REDUCERS),
              mask_pixels=st.booleans(), codec=st.sampled_from(CODECS)),
    st.sampled_from(CODECS).map(lambda c: dataclasses.replace(FilterConfig.baseline(), codec=c)),
)


@settings(max_examples=200, deadline=None)
@given(cfg=flag_configs)
def test_to_flags_parses_back_to_the_same_config(cfg):
    assert parse_filter_args(cfg.to_flags()) == cfg
    recorded = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as a view's attributes hold it
    back = FilterConfig.from_params(recorded)
    assert back == cfg and back.view_name() == cfg.view_name()
    assert "\n" not in cfg.describe()


def test_known_flags_and_names():
    cfg = FilterConfig(max_cover=0.6, monthly=True)
    assert cfg.to_flags() == ["--cloud", "0.6", "--prob", "60", "--combine", "union", "--monthly", "--reducer", "mean"]
    assert cfg.view_name() == "cloud0.6-prob60-union-monthly-mean"
    assert FilterConfig(monthly=True, mask_pixels=True).view_name() == "cloud0.6-prob60-union-monthly-mean-masked"
    assert FilterConfig(max_cover=0.3, combine="sum").view_name() == "cloud0.3-prob60-sum"
    zstd = dataclasses.replace(FilterConfig.baseline(), codec="zstd")
    assert zstd.to_flags() == ["--preset", "baseline", "--codec", "zstd"] and zstd.view_name() == "baseline"
    assert FilterConfig.baseline().to_flags() == ["--preset", "baseline"]
    assert FilterConfig(max_cover=0.1 + 0.2).to_flags()[1] == "0.30000000000000004"  # exact, not 0.3


def test_preset_accepts_agreeing_flags_and_names_a_contradiction():
    base = FilterConfig.baseline()
    assert FilterConfig.from_flags(preset="baseline", monthly=True, max_cover=0.5, min_prob=60, combine="sum",
                                   reducer="mean") == base
    assert parse_filter_args(["--preset", "baseline", "--monthly", "--cloud", "0.5"]) == base
    assert parse_filter_args(["--monthly", "--preset", "baseline", "--codec", "zstd"]).codec == "zstd"
    with pytest.raises(UsageError, match=r"^--cloud 0.6 contradicts --preset baseline \(which uses --cloud 0.5\); "
                                         r"drop one$"):
        FilterConfig.from_flags(preset="baseline", max_cover=0.6)
    with pytest.raises(UsageError, match=r"--mask-pixels contradicts --preset baseline \(which runs without "
                                         r"--mask-pixels\)"):
        parse_filter_args(["--preset", "baseline", "--mask-pixels"])
    with pytest.raises(UsageError, match="--combine union contradicts"):
        FilterConfig.from_flags(preset="baseline", combine="union")
    with pytest.raises(UsageError, match="--preset must be one of baseline"):
        FilterConfig.from_flags(preset="paper")
    with pytest.raises(UsageError, match="skip_empty_months cannot be set by an option"):
        FilterConfig.from_flags(skip_empty_months=True)


def test_configs_without_options_are_refused_by_to_flags():
    for cfg in (FilterConfig(monthly=True, skip_empty_months=True), FilterConfig(ref_year=2021),
                dataclasses.replace(FilterConfig.baseline(), mask_pixels=True), FilterConfig(min_prob=101)):
        with pytest.raises(UsageError, match="no flair-lake filter options give"):
            cfg.to_flags()


def test_from_params_refuses_what_is_no_filter_config():
    with pytest.raises(UsageError, match="view parameters window are not filter parameters"):
        FilterConfig.from_params({**dataclasses.asdict(FilterConfig()), "window": 40})
    with pytest.raises(UsageError, match="wrong type"):
        FilterConfig.from_params({"max_cover": "0.5"})
    with pytest.raises(UsageError, match="--cloud"):
        FilterConfig.from_params({"max_cover": 2.0})
    assert FilterConfig.from_params({}) == FilterConfig()


def test_describe():
    assert FilterConfig().describe() == "cloud 0.6, prob 60, union"
    assert FilterConfig(monthly=True, reducer="median", mask_pixels=True, codec="zstd").describe() == \
        "cloud 0.6, prob 60, union, monthly median, masked pixels, zstd cube"
    assert FilterConfig.baseline().describe() == ("released baseline: cloud 0.5, prob 60, sum, monthly mean, "
                                                  "empty months skipped, day offsets to 15 May 2021, lz4 cube")

"""Views rebuilt with --overwrite become visible by one switch; readers keep the generation they opened.

A reader (the loader) opened on a view reads that generation to its end while two overwrites replace it; the
next reader gets the newest; replaced generations are collected after config.VIEW_RETAIN_S; a checkpoint
records what it trained on and evaluation says in one line when the data differs.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import zarr

from flair_lake import lake as lk
from flair_lake.config import FilterConfig, IngestConfig, SynthConfig, TrainConfig
from flair_lake.loader import LakeDataset
from flair_lake.synth import synthesize
from pipelines.filter import collect_generations, run_filter
from pipelines.ingest import ingest

VIEW = "clear"


def batch(ds: LakeDataset) -> np.ndarray:
    """Every sample's Sentinel-2 input, stacked."""
    return np.stack([np.asarray(ds[i]["sentinel"]) for i in range(len(ds))])


@pytest.fixture()
def view_lake(monthly_lake, tmp_path):
    path = str(tmp_path / "lake.zarr")
    shutil.copytree(monthly_lake, path)
    run_filter(path, FilterConfig(monthly=True), name=VIEW, workers=1)
    return path


def test_a_reader_keeps_its_generation_through_two_overwrites(view_lake):
    lake = view_lake
    reader = LakeDataset(lake, view=VIEW, split="val")
    before = batch(reader)
    assert before.any()
    for cover in (0.05, 0.01):  # two overwrites with other parameters while the reader is open
        run_filter(lake, FilterConfig(monthly=True, max_cover=cover), name=VIEW, overwrite=True, workers=1)
        np.testing.assert_array_equal(batch(reader), before)  # same generation, read whole, never zeros
    fresh = LakeDataset(lake, view=VIEW, split="val")
    assert reader.view == VIEW and fresh.view == f"{VIEW}~3"
    assert not np.array_equal(batch(fresh), before)
    root = zarr.open_group(lake, mode="r")
    assert root["views"].attrs["latest"] == VIEW and root["views"].attrs["current"][VIEW] == f"{VIEW}~3"
    assert lk.replaced_generations(root["views"]) == {VIEW, f"{VIEW}~2"}


def test_replaced_generations_are_collected_after_their_retention(view_lake):
    lake = view_lake
    run_filter(lake, FilterConfig(monthly=True, max_cover=0.05), name=VIEW, overwrite=True, workers=1)
    root = zarr.open_group(lake, mode="r+")
    assert collect_generations(root) == []  # within the retention: kept for its readers
    assert collect_generations(root, now=2e10) == [VIEW]
    assert VIEW not in root["views"] and f"{VIEW}~2" in root["views"]
    assert LakeDataset(lake, view=VIEW, split="val").view == f"{VIEW}~2"


def test_an_overwrite_killed_before_its_switch_is_finished_by_the_same_command(view_lake):
    lake = view_lake
    from pipelines.filter import switch

    cfg = FilterConfig(monthly=True, max_cover=0.05)
    run_filter(lake, cfg, name=VIEW, overwrite=True, workers=1)
    root = zarr.open_group(lake, mode="r+")
    switch(root, VIEW, VIEW)  # as if the switch of the run above had not happened
    assert LakeDataset(lake, view=VIEW, split="val").view == VIEW
    again = run_filter(lake, cfg, name=VIEW, overwrite=True, workers=1)
    assert again.up_to_date and again.shards_written == 0  # the built generation is switched, not rebuilt
    assert LakeDataset(lake, view=VIEW, split="val").view == f"{VIEW}~2"


def test_evaluation_says_when_the_data_is_not_what_the_run_trained_on(view_lake, tmp_path, caplog):
    lake = view_lake
    from flair_lake.training.evaluate import evaluate
    from flair_lake.training.loop import fit

    out = tmp_path / "run"
    fit(TrainConfig(lake=lake, view=VIEW, model="unet", epochs=1, batch_size=4, workers=0, out=str(out),
                    max_batches=1), progress=False)
    with caplog.at_level(logging.WARNING):
        evaluate(out / "best.pt", lake, split="val", workers=0, max_batches=1)
    assert "trained on other data" not in caplog.text
    more = tmp_path / "more"
    synthesize(more, SynthConfig.from_preset("tiny", domains=("D013_2020",), patches_per_zone=4, max_dates=30))
    ingest(more, lake, IngestConfig(workers=1, patches_per_shard=8))
    run_filter(lake, FilterConfig(monthly=True), name=VIEW, workers=1)  # extended in place: same generation
    run_filter(lake, FilterConfig(monthly=True, max_cover=0.05), name=VIEW, overwrite=True, workers=1)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        res = evaluate(out / "best.pt", lake, split="val", workers=0, max_batches=1)  # its own generation
    assert res["view"] == VIEW  # the first generation, still there after the overwrite, not the current ~2
    assert "1 ingest run(s) added since training" in caplog.text and "trained on" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        evaluate(out / "best.pt", lake, split="val", view=VIEW, workers=0, max_batches=1)
    assert f"view {VIEW}~2 (trained on {VIEW}~1)" in caplog.text

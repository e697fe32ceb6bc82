"""The zarr-streaming loader: sample contract, equality with the raw baseline reader, workers, DDP sampler,
augmentation consistency, padding masks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import zarr

from flair_lake import schema
from flair_lake.config import FilterConfig
from flair_lake.loader import BatchTransform, EpochBatchSampler, LakeDataset, collate, make_loader
from flair_lake.loader.raw import RawBaselineDataset
from pipelines.filter import run_filter


@pytest.fixture(scope="module")
def viewed_lake(lake, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("viewed") / "lake.zarr")
    shutil.copytree(lake, path)
    run_filter(path, FilterConfig.baseline(), workers=2)
    run_filter(path, FilterConfig(max_cover=0.6), workers=2)  # a non-monthly view
    run_filter(path, FilterConfig(monthly=True), workers=2)  # the latest: default
    return path


def test_sample_contract(viewed_lake):
    ds = LakeDataset(viewed_lake, split="train")
    assert ds.view == "cloud0.6-prob60-union-monthly-mean" and len(ds) == 16
    batch = collate(ds.__getitems__([0, 3, 5]))
    p = ds.patch_size
    expect = {"aerial": (torch.uint8, (3, 5, p, p)), "label": (torch.int64, (3, p, p)),
              "sentinel": (torch.float32, (3, 12, 10, 40, 40)), "dates": (torch.int64, (3, 12)),
              "pad_mask": (torch.bool, (3, 12)), "mtd": (torch.float32, (3, schema.MTD_DIM)),
              "patch_id": (torch.int64, (3,)), "row": (torch.int64, (3,))}
    assert set(batch) == set(schema.SAMPLE_KEYS) == set(expect)
    for k, (dtype, shape) in expect.items():
        assert batch[k].dtype == dtype and tuple(batch[k].shape) == shape, k
    assert batch["label"].min() >= 0 and batch["label"].max() <= 12
    assert torch.isfinite(batch["mtd"]).all() and batch["mtd"].abs().max() <= 1.0 + 1e-6


def test_lake_loader_equals_the_raw_baseline_reader(raw_tree, viewed_lake):
    ds = LakeDataset(viewed_lake, view="baseline", split="val")
    assert ds.skip_empty  # the baseline view drops empty months
    raw = RawBaselineDataset(raw_tree, patch_ids=[int(i) for i in ds.patch_ids])
    compared = 0
    for i in range(len(ds)):
        a, b = ds[i], raw[i]
        assert int(a["patch_id"]) == int(b["patch_id"])
        assert torch.equal(a["aerial"], b["aerial"]) and torch.equal(a["label"], b["label"])
        assert torch.equal(a["dates"], b["dates"])
        assert torch.equal(a["sentinel"], torch.round(b["sentinel"]))  # the lake stores the mean rounded to DN
        compared += a["sentinel"].shape[0]
    assert compared > 10


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_workers_yield_the_same_samples(viewed_lake, kind):
    ids0 = sorted(int(i) for b in make_loader(viewed_lake, split="all", batch_size=5, num_workers=0)
                  for i in b["patch_id"])
    loader = make_loader(viewed_lake, split="all", batch_size=5, num_workers=2, worker_kind=kind)
    batches = list(loader)
    ids2 = sorted(int(i) for b in batches for i in b["patch_id"])
    assert ids0 == ids2 and len(ids0) == 32 and len(set(ids0)) == 32
    assert batches[0]["label"].dtype == torch.uint8 and batches[0]["sentinel"].dtype == torch.uint16
    out = BatchTransform({})(batches[0])  # the device-side cast restores the contract dtypes
    assert out["label"].dtype == torch.int64 and out["sentinel"].dtype == torch.float32


def test_distributed_sampler_is_disjoint_and_reshuffles():
    n, world = 23, 3
    samplers = [EpochBatchSampler(n, 4, rank=r, world_size=world, seed=7) for r in range(world)]
    per_rank = [set(s.rank_indices()) for s in samplers]
    assert all(len(s) == len(samplers[0]) for s in samplers)
    union = set().union(*per_rank)
    assert union == set(range(n))
    # disjoint except the wrap-around padding (ceil(23/3)*3 - 23 = 1 repeated index)
    assert sum(len(s) for s in per_rank) - len(union) <= 1
    first = [list(s.rank_indices()) for s in samplers]
    for s in samplers:
        s.set_epoch(1)
    second = [list(s.rank_indices()) for s in samplers]
    assert first != second and set().union(*map(set, second)) == set(range(n))
    assert list(EpochBatchSampler(10, 3, shuffle=False)) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_augmentation_moves_aerial_labels_and_sentinel_together():
    p, b = 40, 16
    aerial = torch.zeros(b, 5, p, p, dtype=torch.uint8)
    label = torch.zeros(b, p, p, dtype=torch.int64)
    sen = torch.zeros(b, 2, 10, 40, 40)
    # a marker on the aerial patch at Sentinel pixel (16, 18) of the window (centre crop rows/cols 15..24)
    aerial[:, :, 4:8, 12:16] = 200
    label[:, 4:8, 12:16] = 5
    sen[:, :, :, 16, 18] = 5000
    batch = {"aerial": aerial, "label": label, "sentinel": sen, "pad_mask": torch.zeros(b, 2, dtype=torch.bool),
             "dates": torch.zeros(b, 2, dtype=torch.int64)}
    out = BatchTransform({}, augment=True)(batch, generator=torch.Generator().manual_seed(3))
    moved = set()
    for i in range(b):
        ys, xs = torch.nonzero(out["aerial"][i, 0] > out["aerial"][i, 0].min(), as_tuple=True)
        ly, lx = torch.nonzero(out["label"][i] == 5, as_tuple=True)
        assert torch.equal(ys, ly) and torch.equal(xs, lx)
        sy, sx = torch.nonzero(out["sentinel"][i, 0, 0] > out["sentinel"][i, 0, 0].min(), as_tuple=True)
        # the aerial marker, in Sentinel pixels of the window, is the Sentinel marker
        assert (int(ys.min()) // 4 + 15, int(xs.min()) // 4 + 15) == (int(sy[0]), int(sx[0]))
        moved.add((int(sy[0]), int(sx[0])))
    assert len(moved) >= 4  # several different flips and rotations were drawn


def test_paper_augmentation_moves_aerial_labels_and_sentinel_by_one_map_in_metres():
    """Aerial band 0 and Sentinel band 0 hold the x coordinate (metres from the patch centre), band 1 the y;
    labels are 4 x 4 blocks of a class. After the paper's AUG (flips, resize, shift-scale-rotate), every pixel
    still shows the coordinates it came from: the patch centre's aerial and Sentinel values agree, and each
    label block is where its aerial block went."""
    from flair_lake import schema

    p, b, w = 64, 32, 40
    res = schema.PATCH_FOOTPRINT_M / p
    u = (torch.arange(p) + 0.5 - p / 2) * res  # aerial pixel centres, metres
    v = (torch.arange(w) + 0.5 - w / 2) * schema.S2_PIXEL_M
    aerial = torch.zeros(b, 5, p, p)
    aerial[:, 0] = u[None, None, :]
    aerial[:, 1] = -u[None, :, None]
    blocks = (torch.arange(p) // 4)
    label = ((blocks[:, None] * 3 + blocks[None, :]) % 12).repeat(b, 1, 1)
    aerial[:, 2] = label.float()
    sen = torch.zeros(b, 1, 10, w, w)
    sen[:, 0, 0] = v[None, None, :]
    sen[:, 0, 1] = -v[None, :, None]
    stats = {"aerial": {"mean": [0.0] * 5, "std": [1.0] * 5}, "sentinel": {"mean": [0.0] * 10, "std": [1.0] * 10}}
    batch = {"aerial": aerial, "label": label, "sentinel": sen, "pad_mask": torch.zeros(b, 1, dtype=torch.bool)}
    out = BatchTransform(stats, augment="paper")(batch, generator=torch.Generator().manual_seed(0))
    c = p // 2
    aer_xy = out["aerial"][:, :2, c - 1:c + 1, c - 1:c + 1].mean((-1, -2))  # the patch centre's source point
    sen_xy = out["sentinel"][:, 0, :2, w // 2 - 1:w // 2 + 1, w // 2 - 1:w // 2 + 1].mean((-1, -2))
    torch.testing.assert_close(aer_xy, sen_xy, atol=0.05, rtol=0)  # the same point, in metres
    moved = (aer_xy.abs() > 0.5).any(1).sum()
    assert moved >= b // 3  # shifts were drawn (flips, rotations and zooms keep the centre)
    inside = out["label"] != schema.IGNORE_LABEL
    assert (~inside).any() and inside.float().mean() > 0.7  # pixels brought in from outside are ignored
    # where the label block is uniform around a pixel, the aerial's class band shows the same class
    lab = out["label"].float()
    uniform = inside.clone()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            uniform &= torch.roll(lab, (dy, dx), (1, 2)) == lab
    diff = (out["aerial"][:, 2] - lab).abs()[uniform]
    assert (diff < 0.5).float().mean() > 0.99  # (bilinear can still reach across a block edge when zoomed out)
    assert (diff < 1e-3).float().mean() > 0.9


def test_padding_masks(viewed_lake):
    root = zarr.open_group(viewed_lake, mode="r")
    report = root["views/cloud0.6-prob60-union-monthly-mean"].attrs["report"]
    empty_id = report["no_clear_date"][0]
    ds = LakeDataset(viewed_lake, split="all")
    i = int(np.flatnonzero(ds.patch_ids == empty_id)[0])
    s = ds[i]
    assert s["pad_mask"].all() and not s["sentinel"].any()  # no clear date at all: every month masked
    counts = root["views/cloud0.6-prob60-union-monthly-mean/month_count"][:]
    for j in range(len(ds)):
        assert torch.equal(ds[j]["pad_mask"], torch.from_numpy(counts[ds.rows[j]] == 0))
    # a non-monthly view: the kept raw dates, padded per batch
    raw_view = LakeDataset(viewed_lake, view="cloud0.6-prob60-union", split="train")
    samples = raw_view.__getitems__([0, 7, 9, 14])
    lengths = [x["sentinel"].shape[0] for x in samples]
    batch = collate(samples)
    assert batch["sentinel"].shape[1] == max(lengths) > 0 and len(set(lengths)) > 1
    for k, n in enumerate(lengths):
        assert not batch["pad_mask"][k, :n].any() and batch["pad_mask"][k, n:].all()
        assert not batch["sentinel"][k, n:].any()


def test_unknown_view_and_split(viewed_lake):
    with pytest.raises(Exception, match="views: baseline"):
        LakeDataset(viewed_lake, view="nope")
    with pytest.raises(Exception, match="unknown split or domain"):
        LakeDataset(viewed_lake, split="D999_2020")
    assert len(LakeDataset(viewed_lake, split=["D006_2020", "D004_2021"])) == 16


def test_zarrs_pipeline_reads_the_same_samples(viewed_lake):
    pytest.importorskip("zarrs")
    before = zarr.config.get("codec_pipeline.path")
    python = LakeDataset(viewed_lake, split="all", use_zarrs=False)
    rust = LakeDataset(viewed_lake, split="all", use_zarrs=True)
    a, b = python.__getitems__([0, 5, 9]), rust.__getitems__([0, 5, 9])
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)

    def pipeline(ds):
        return type(ds._open()["aerial"]._async_array.codec_pipeline).__name__

    assert pipeline(rust) == "ZarrsCodecPipeline" and pipeline(python) != "ZarrsCodecPipeline"
    # the dataset's arrays keep their pipeline; the process's zarr settings are left as they were
    assert zarr.config.get("codec_pipeline.path") == before


@pytest.mark.parametrize("view", ["baseline", "cloud0.6-prob60-union-monthly-mean"])
@pytest.mark.parametrize("compact", [False, True])
def test_batch_read_equals_collated_samples(viewed_lake, view, compact):
    """The whole-batch read (one codec call per array, rows in any order, empty months moved and cut) gives
    exactly what collating the samples read one by one gives, including patches without a clear date."""
    ds = LakeDataset(viewed_lake, view=view, split="all", compact=compact)
    counts = zarr.open_group(viewed_lake, mode="r")[f"views/{view}/month_count"][:][ds.rows]
    empty = [int(i) for i in np.flatnonzero(counts.sum(1) == 0)]
    assert empty, "the synthetic tree has a patch without a clear date"
    rng = np.random.default_rng(0)
    batches = [empty, empty + [0, 5], [7, 2, 9, 2, 31, 0]] + [list(rng.permutation(len(ds))[:6]) for _ in range(3)]
    for idx in batches:
        whole = collate(ds.__getitems__(idx))
        one_by_one = collate([ds[i] for i in idx])
        assert set(whole) == set(one_by_one)
        for k in whole:
            assert whole[k].dtype == one_by_one[k].dtype and torch.equal(whole[k], one_by_one[k]), (idx, k)

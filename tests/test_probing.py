"""Positional probes: extraction is resumable and recovers from damaged chunks; probes learn position when
it is there and sit at chance on shuffled labels; stage labels follow the adapter's views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechanisms.data.image_sets import image_set
from mechanisms.experiments.probing import Extraction, extract, save_npz, stage_states, train_probe
from mechanisms.models.adapters.llava import load_llava
from mechanisms.models.registry import REPO_ROOT

GRID = 6


def _fake_extraction(root, n_images: int, informative: bool, seed: int) -> Extraction:
    """States that encode (row, col) one-hot plus noise (or pure noise), in two chunks."""
    rng = np.random.default_rng(seed)
    rows, cols = np.repeat(np.arange(GRID), GRID), np.tile(np.arange(GRID), GRID)
    per_chunk = n_images // 2
    for chunk in range(2):
        xs, rr, cc, im = [], [], [], []
        for image in range(per_chunk):
            x = rng.normal(size=(GRID * GRID, 16))
            if informative:
                x[np.arange(GRID * GRID), rows] += 3
                x[np.arange(GRID * GRID), GRID + cols] += 3
            xs.append(x)
            rr.append(rows), cc.append(cols), im.append(np.full(GRID * GRID, chunk * per_chunk + image))
        save_npz(root / "s" / f"chunk-{chunk:05d}.npz", x=np.concatenate(xs).astype(np.float16),
                  rows=np.concatenate(rr).astype(np.int16), cols=np.concatenate(cc).astype(np.int16),
                  image=np.concatenate(im).astype(np.int32))
    return Extraction(root, ["s"], 2)


def test_probe_reads_position_when_present_and_chance_on_shuffled_labels(tmp_path):
    train = _fake_extraction(tmp_path / "train", 40, True, 0)
    test = _fake_extraction(tmp_path / "test", 20, True, 1)
    learned = train_probe(train, test, "s", GRID, GRID, epochs=10, batch_size=64, lr=1e-2)
    assert learned.accuracy > 0.85  # the signal (+3 on one of 16 noisy dims) bounds it near 0.93
    control = train_probe(train, test, "s", GRID, GRID, epochs=10, batch_size=64, lr=1e-2, shuffle_labels=True)
    assert abs(control.accuracy - 1 / GRID) < 0.1
    noise = train_probe(_fake_extraction(tmp_path / "ntrain", 40, False, 2),
                        _fake_extraction(tmp_path / "ntest", 20, False, 3), "s", GRID, GRID, epochs=5, lr=1e-2)
    assert abs(noise.accuracy - 1 / GRID) < 0.1
    assert learned.per_image().shape == (20,)
    assert np.nanmax(learned.per_position) <= 1.0


@pytest.fixture(scope="module")
def adapter():
    return load_llava(REPO_ROOT / "fixtures/models/tiny-llava", torch.float32, "cpu")


def test_stage_states_cover_every_layer_with_view_labels(adapter):
    loaders, _ = image_set("synthetic:5:6")
    states = stage_states(adapter, [load() for load in loaders[:2]])
    n_vision = adapter.model.config.vision_config.num_hidden_layers + 1
    n_lm = adapter.head_layout().n_layers
    assert list(states) == [f"vision.{i:02d}" for i in range(n_vision)] + ["projector"] + \
        [f"llm.{i:02d}" for i in range(n_lm)]
    x, rows, cols, image = states["projector"]
    grid = adapter.grid
    assert x.shape[0] == 2 * grid * grid and x.dtype == np.float16
    assert (rows[:grid * grid] == np.repeat(np.arange(grid), grid)).all()
    assert (cols[:grid * grid] == np.tile(np.arange(grid), grid)).all()
    assert (image == np.repeat([0, 1], grid * grid)).all()


def test_extraction_resumes_and_recomputes_only_damaged_chunks(adapter, tmp_path):
    loaders, _ = image_set("synthetic:5:6")
    first = extract(adapter, loaders, tmp_path, chunk_images=2)
    assert first.n_chunks == 3
    files = {p: p.stat().st_mtime_ns for stage in first.stages for p in first.chunks(stage)}
    original = np.load(first.chunks("projector")[1])["x"].copy()
    first.chunks("projector")[1].write_bytes(b"truncated")  # a crash mid-write elsewhere, or a bad disk
    first.chunks("llm.02")[2].unlink()
    again = extract(adapter, loaders, tmp_path, chunk_images=2)
    assert np.array_equal(np.load(again.chunks("projector")[1])["x"], original)
    assert again.chunks("llm.02")[2].is_file()
    untouched = [p for p in files if p.name == "chunk-00000.npz"]
    assert all(p.stat().st_mtime_ns == files[p] for p in untouched)  # finished chunks were not recomputed


def test_the_disk_check_estimates_the_extraction_and_stops_a_run_that_would_not_fit(adapter, tmp_path):
    """The estimate (one image's states per view x every image's views) is within 10 % of what `extract`
    writes (npz headers aside); a budget below it stops before anything is written; finished sets need none."""
    from mechanisms.experiments.probing import ProbeDiskError, check_disk, estimate_extraction_bytes

    loaders, _ = image_set("synthetic:5:6")
    estimate, _ = estimate_extraction_bytes(adapter, loaders)
    root = tmp_path / "states"
    with pytest.raises(ProbeDiskError, match="positional probes would write"):
        check_disk(adapter, [(loaders, root, 2)], budget_bytes=estimate // 2)
    assert not any(root.rglob("*.npz"))
    extract(adapter, loaders, root, chunk_images=2)
    written = sum(p.stat().st_size for p in root.rglob("*.npz"))
    assert abs(written - estimate) < 0.1 * written
    check_disk(adapter, [(loaders, root, 2)], budget_bytes=0)  # nothing left to extract: nothing needed


def test_a_token_subset_is_seeded_per_image_and_stage_and_bounds_the_disk(adapter, tmp_path):
    """`tokens_per_image` keeps that many tokens of every image in every stage, the same ones whatever the
    chunking, different ones for another seed; the estimate follows the subset (within 10 %)."""
    from mechanisms.experiments.probing import estimate_extraction_bytes, load_npz

    loaders, _ = image_set("synthetic:5:6")

    def kept(root, chunk_images, seed):
        extraction = extract(adapter, loaders, root, chunk_images=chunk_images, tokens_per_image=5, seed=seed)
        out = {}
        for stage in extraction.stages:
            parts = [load_npz(p) for p in extraction.chunks(stage)]
            out[stage] = (np.concatenate([p["image"] for p in parts]), np.concatenate([p["rows"] for p in parts]),
                          np.concatenate([p["cols"] for p in parts]), np.concatenate([p["x"] for p in parts]))
        return out

    by_two, by_three, other_seed = kept(tmp_path / "a", 2, 0), kept(tmp_path / "b", 3, 0), kept(tmp_path / "c", 2, 1)
    for stage, (image, rows, cols, x) in by_two.items():
        assert (np.bincount(image) == 5).all()  # 5 tokens of each of the 6 images
        for mine, theirs in zip((image, rows, cols, x), by_three[stage]):
            assert np.array_equal(mine, theirs)
    assert any(not np.array_equal(by_two[s][1:3], other_seed[s][1:3]) for s in by_two)
    written = sum(p.stat().st_size for p in (tmp_path / "a").rglob("*.npz"))
    estimate, _ = estimate_extraction_bytes(adapter, loaders, tokens_per_image=5)
    full, _ = estimate_extraction_bytes(adapter, loaders)
    assert estimate < full / 10
    assert abs(written - estimate) < 0.1 * written + 4096 * len(by_two)  # npz headers per file


def test_streamed_test_scoring_equals_scoring_a_stored_extraction(adapter, tmp_path):
    """Scoring probes on test images streamed (never stored) gives the result of scoring their stored states."""
    from mechanisms.experiments.probing import evaluate_streamed, fit_probe

    train = extract(adapter, image_set("synthetic:5:6")[0], tmp_path / "train", chunk_images=3)
    test_loaders, _ = image_set("synthetic:6:4")
    test = extract(adapter, test_loaders, tmp_path / "test", chunk_images=2)
    grid = adapter.grid
    stages = ["projector", "llm.01"]
    stored = {stage: train_probe(train, test, stage, grid, grid, epochs=2, seed=3) for stage in stages}
    probes = {stage: fit_probe(train, stage, grid, grid, epochs=2, seed=3) for stage in stages}
    streamed = evaluate_streamed(adapter, test_loaders, probes, chunk_images=2)
    for stage in stages:
        a, b = stored[stage], streamed[stage]
        assert (a.row_accuracy, a.col_accuracy) == (b.row_accuracy, b.col_accuracy)
        assert np.array_equal(a.both_correct, b.both_correct) and np.array_equal(a.test_images, b.test_images)
        np.testing.assert_array_equal(a.per_position, b.per_position)

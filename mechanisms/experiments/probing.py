"""Positional decoding (§3.2, Figures 2 and 11): can a linear probe read a token's grid position from
its hidden state, stage by stage (vision backbone layers, projector output, LM layers)?

Training images go through the model a chunk at a time and every stage's image-token states are written
to disk as one file per (stage, chunk), atomically, so memory stays bounded by the chunk and a killed
extraction resumes from the first missing chunk. Probes then stream the same files: one linear
classifier per axis (row, column), trained with minibatch SGD (Adam) for a fixed number of epochs, its
inputs standardized with statistics of the training set. Labels are each token's (row, col) in its own
view, so the code is the same for LLaVA's one grid and InternVL's tiles + thumbnail.

Disk at the paper's scale (50,000 training images) is bounded by storing, per training image and stage,
a seeded random subset of `tokens_per_image` token positions (0: all): every stage's states of one LLaVA-7B
token take ~322 kB in fp16, so all 576 tokens of 50k images would be ~9 TB, 4 per image ~64 GB. Test
images are never stored: the trained probes read them in one streamed pass (`evaluate_streamed`), so every
test token and grid position is scored whatever the training subset.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mechanisms.models import sites
from mechanisms.models.adapters.base import NEUTRAL_QUESTION
from mechanisms.storage import atomic_write_bytes, atomic_write_json, storable

# ----- extraction ------------------------------------------------------------------------------------


def _token_labels(views) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, col) of each grid token of the views, and which image tokens those are (row-end tokens have no
    place on the grid: they are not probed)."""
    rows = np.concatenate([np.repeat(np.arange(v.rows), v.cols) for v in views])
    cols = np.concatenate([np.tile(np.arange(v.cols), v.rows) for v in views])
    return rows, cols, np.concatenate([v.grid_slots() for v in views])


@torch.no_grad()
def stage_states(adapter, images: list) -> dict[str, tuple[np.ndarray, ...]]:
    """{stage: (states [n, d] float16, rows [n], cols [n], image index [n])} for a batch of images."""
    device = next(adapter.model.parameters()).device
    inputs = adapter.encode(images, [NEUTRAL_QUESTION] * len(images))
    inputs = {k: v.to(device) for k, v in inputs.items()}
    out: dict[str, list] = {}

    def add(stage, states, rows, cols, image):
        out.setdefault(stage, []).append((states.float().cpu().numpy().astype(np.float16), rows, cols,
                                          np.full(len(rows), image)))

    vision, grids = adapter.vision_hidden_states(inputs)
    labels = [(np.repeat(np.arange(rows), cols), np.tile(np.arange(cols), rows)) for rows, cols in grids]
    view_owner = np.repeat(np.arange(len(images)), [len(adapter.views(*im.size)) for im in images])
    if len(view_owner) != len(grids):
        raise ValueError(f"the vision tower saw {len(grids)} views, the adapter lays out {len(view_owner)}")
    for layer, states in enumerate(vision):
        for view_states, owner, (v_rows, v_cols) in zip(states, view_owner, labels):  # one per view fed in
            add(sites.vision_layer(layer), view_states, v_rows, v_cols, owner)
    features = adapter.visual_tokens(inputs)
    lm = adapter.model(**inputs, output_hidden_states=True, logits_to_keep=1).hidden_states  # states, not logits
    positions = adapter.image_token_mask(inputs["input_ids"])
    for i, image in enumerate(images):
        rows, cols, on_grid = _token_labels(adapter.views(*image.size))
        on_grid = torch.as_tensor(on_grid, device=features[i].device)
        add(sites.PROJECTOR, features[i][on_grid], rows, cols, i)
        for layer, states in enumerate(lm[1:]):
            add(sites.llm_layer(layer), states[i][positions[i]][on_grid], rows, cols, i)
    return {stage: tuple(np.concatenate([p[k] for p in parts]) for k in range(4)) for stage, parts in out.items()}


def save_npz(path: Path, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_npz(path: Path) -> dict | None:
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except Exception:  # truncated / corrupt: the chunk is recomputed
        return None


@dataclass
class Extraction:
    """Chunk files per stage under `root`; `stages` in model order."""

    root: Path
    stages: list[str]
    n_chunks: int

    def chunks(self, stage: str) -> list[Path]:
        return [self.root / stage / f"chunk-{i:05d}.npz" for i in range(self.n_chunks)]


def subsample(states: dict[str, tuple[np.ndarray, ...]], tokens_per_image: int, seed: int, first_image: int
              ) -> dict[str, tuple[np.ndarray, ...]]:
    """Keep `tokens_per_image` seeded random tokens of each image in each stage (all when it has fewer; 0:
    all). The draw depends on (seed, stage, image index) only, not on the chunking or the other images."""
    if not tokens_per_image:
        return states
    kept = {}
    for stage, arrays in states.items():
        image = arrays[3]
        chosen = []
        for index in np.unique(image):
            positions = np.flatnonzero(image == index)
            salt = int(hashlib.sha256(f"{seed}:{stage}:{first_image + int(index)}".encode()).hexdigest()[:8], 16)
            rng = np.random.default_rng(salt)
            chosen.append(np.sort(rng.choice(positions, min(tokens_per_image, len(positions)), replace=False)))
        chosen = np.concatenate(chosen)
        kept[stage] = tuple(a[chosen] for a in arrays)
    return kept


def extract(adapter, loaders: list, root: Path, chunk_images: int = 32, progress: bool = False,
            tokens_per_image: int = 0, seed: int = 0) -> Extraction:
    """Write every stage's states for all images (or `tokens_per_image` of each, `subsample`), chunk by
    chunk; finished chunks are kept (resume)."""
    root = Path(root)
    n_chunks = (len(loaders) + chunk_images - 1) // chunk_images
    stages_file = root / "stages.json"
    stages = json.loads(stages_file.read_text()) if stages_file.is_file() else None
    iterator = range(n_chunks)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc="extracting hidden states", unit="chunk")
    for chunk in iterator:
        if stages is not None and all(load_npz(root / s / f"chunk-{chunk:05d}.npz") is not None for s in stages):
            continue
        images = [load() for load in loaders[chunk * chunk_images:(chunk + 1) * chunk_images]]
        every = stage_states(adapter, images)
        _record_grids(root, every)
        states = subsample(every, tokens_per_image, seed, chunk * chunk_images)
        for stage, (x, rows, cols, image) in states.items():
            save_npz(root / stage / f"chunk-{chunk:05d}.npz", x=x, rows=rows.astype(np.int16),
                      cols=cols.astype(np.int16), image=(image + chunk * chunk_images).astype(np.int32))
        if stages is None:
            stages = list(states)
            atomic_write_json(stages_file, stages)
    if loaders:
        _record_grids(root, None, lambda: stage_states(adapter, [loaders[0]()]))  # an extraction resumed from before
    return Extraction(root, stages or [], n_chunks)


def _record_grids(root: Path, states, compute=None) -> None:
    """Each stage's token grid (rows, cols), from all tokens (a token subset may miss a row), once."""
    if (root / "grids.json").is_file():
        return
    states = states if states is not None else compute()
    atomic_write_json(root / "grids.json", {stage: [int(a[1].max()) + 1, int(a[2].max()) + 1]
                                             for stage, a in states.items()})


def extraction_root(cache_dir: Path, model_fingerprint: str, images_fingerprint: str) -> Path:
    key = hashlib.sha256(f"{model_fingerprint}:{images_fingerprint}".encode()).hexdigest()[:16]
    return Path(cache_dir) / "probe-states" / key


# ----- probes ----------------------------------------------------------------------------------------


@storable
@dataclass
class ProbeResult:
    """Held-out accuracy of one stage's probes, overall and per grid position."""

    stage: str
    row_accuracy: float
    col_accuracy: float
    per_position: np.ndarray  # [rows, cols]: P(row and col both right) for tokens at that position
    per_token_correct: np.ndarray  # [n_test_tokens]: mean of the two axes' correctness
    test_rows: np.ndarray
    test_cols: np.ndarray
    test_images: np.ndarray
    both_correct: np.ndarray  # [n_test_tokens]: row and col both right

    @property
    def accuracy(self) -> float:
        return (self.row_accuracy + self.col_accuracy) / 2

    def per_image(self, tokens: np.ndarray | None = None, joint: bool = False) -> np.ndarray:
        """Mean correctness per test image over the selected tokens (images are the bootstrap unit:
        tokens of one image are not independent)."""
        values = self.both_correct.astype(float) if joint else self.per_token_correct
        keep = np.ones(len(values), dtype=bool) if tokens is None else tokens
        images = np.unique(self.test_images)
        return np.asarray([values[keep & (self.test_images == i)].mean() if (keep & (self.test_images == i)).any()
                           else np.nan for i in images])


def _standardizer(chunks: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    total, total_sq, count = None, None, 0
    for path in chunks:
        x = torch.from_numpy(load_npz(path)["x"]).double()
        total = x.sum(0) if total is None else total + x.sum(0)
        total_sq = (x ** 2).sum(0) if total_sq is None else total_sq + (x ** 2).sum(0)
        count += x.shape[0]
    mean = total / count
    std = (total_sq / count - mean ** 2).clamp(min=1e-12).sqrt()
    return mean.float(), std.float()


@dataclass
class FittedProbe:
    """One stage's two linear classifiers (row, col) and the training set's standardization."""

    mean: torch.Tensor
    std: torch.Tensor
    rows_head: torch.nn.Linear
    cols_head: torch.nn.Linear
    n_rows: int
    n_cols: int

    @torch.no_grad()
    def predict(self, x16: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) predictions for fp16 states [n, d] (as stored)."""
        x = (torch.from_numpy(np.ascontiguousarray(x16)).float() - self.mean) / self.std
        return self.rows_head(x).argmax(-1).numpy(), self.cols_head(x).argmax(-1).numpy()


def fit_probe(train: Extraction, stage: str, n_rows: int, n_cols: int, epochs: int = 10, batch_size: int = 512,
              lr: float = 1e-3, seed: int = 0, shuffle_labels: bool = False) -> FittedProbe:
    """Train one stage's probes on its stored chunks; `shuffle_labels` is the chance control."""
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    chunks = train.chunks(stage)
    mean, std = _standardizer(chunks)
    dim = mean.shape[0]
    rows_head, cols_head = torch.nn.Linear(dim, n_rows), torch.nn.Linear(dim, n_cols)
    for head in (rows_head, cols_head):
        torch.nn.init.normal_(head.weight, std=0.01, generator=generator)
        torch.nn.init.zeros_(head.bias)
    optimizer = torch.optim.Adam([*rows_head.parameters(), *cols_head.parameters()], lr=lr)
    for _ in range(epochs):
        for index in rng.permutation(len(chunks)):
            data = load_npz(chunks[index])
            x = (torch.from_numpy(data["x"]).float() - mean) / std
            rows, cols = torch.from_numpy(data["rows"]).long(), torch.from_numpy(data["cols"]).long()
            if shuffle_labels:
                perm = torch.from_numpy(rng.permutation(len(rows)))
                rows, cols = rows[perm], cols[perm]
            order = torch.from_numpy(rng.permutation(len(x)))
            for start in range(0, len(x), batch_size):
                batch = order[start:start + batch_size]
                loss = (torch.nn.functional.cross_entropy(rows_head(x[batch]), rows[batch])
                        + torch.nn.functional.cross_entropy(cols_head(x[batch]), cols[batch]))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return FittedProbe(mean, std, rows_head, cols_head, n_rows, n_cols)


class _Scores:
    """Test predictions of one probe, accumulated chunk by chunk, then the `ProbeResult`."""

    def __init__(self, stage: str, probe: FittedProbe):
        self.stage, self.probe, self.parts = stage, probe, []

    def add(self, x16: np.ndarray, rows: np.ndarray, cols: np.ndarray, images: np.ndarray) -> None:
        row_pred, col_pred = self.probe.predict(x16)
        rows, cols = rows.astype(int), cols.astype(int)
        self.parts.append((row_pred == rows, col_pred == cols, rows, cols, images))

    def result(self) -> ProbeResult:
        row_hits, col_hits, test_rows, test_cols, images = (np.concatenate([p[k] for p in self.parts])
                                                            for k in range(5))
        both = row_hits & col_hits
        per_position = np.full((self.probe.n_rows, self.probe.n_cols), np.nan)
        for r in range(self.probe.n_rows):
            for c in range(self.probe.n_cols):
                here = (test_rows == r) & (test_cols == c)
                if here.any():
                    per_position[r, c] = both[here].mean()
        return ProbeResult(self.stage, float(row_hits.mean()), float(col_hits.mean()), per_position,
                           (row_hits.astype(float) + col_hits.astype(float)) / 2, test_rows, test_cols, images, both)


def train_probe(train: Extraction, test: Extraction, stage: str, n_rows: int, n_cols: int, epochs: int = 10,
                batch_size: int = 512, lr: float = 1e-3, seed: int = 0, shuffle_labels: bool = False) -> ProbeResult:
    """Fit one stage's probes (`fit_probe`) and score them on a stored test extraction."""
    probe = fit_probe(train, stage, n_rows, n_cols, epochs, batch_size, lr, seed, shuffle_labels)
    scores = _Scores(stage, probe)
    for path in test.chunks(stage):
        data = load_npz(path)
        scores.add(data["x"], data["rows"], data["cols"], data["image"])
    return scores.result()


def evaluate_streamed(adapter, loaders: list, probes: dict[str, FittedProbe], chunk_images: int = 32,
                      stage_of: dict[str, str] | None = None) -> dict[str, ProbeResult]:
    """Score fitted probes on test images without storing their states: one forward pass per chunk, each
    stage's states (rounded to fp16, as stored for training) read by that stage's probe. `stage_of` maps a
    result's name to the stage its probe reads (default: the same name)."""
    stage_of = stage_of or {name: name for name in probes}
    scores = {name: _Scores(stage_of[name], probe) for name, probe in probes.items()}
    for chunk in range(0, len(loaders), chunk_images):
        states = stage_states(adapter, [load() for load in loaders[chunk:chunk + chunk_images]])
        for name, score in scores.items():
            x, rows, cols, image = states[stage_of[name]]
            score.add(x, rows, cols, image + chunk)
    return {name: score.result() for name, score in scores.items()}


def corner_mask(n_rows: int, n_cols: int) -> np.ndarray:
    mask = np.zeros((n_rows, n_cols), dtype=bool)
    mask[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    return mask


# ----- the study the claims read ----------------------------------------------------------------------


@storable
@dataclass
class ProbeStudy:
    """Probe results for every stage in model order, plus the shuffled-label control at the projector."""

    results: dict[str, ProbeResult]
    control: ProbeResult

    def stages(self, stage: str) -> list[str]:
        """The sites of one stage (`sites.VISION`, `sites.PROJECTOR`, `sites.LLM`), in model order."""
        return [s for s in self.results if sites.stage_of(s) == stage]

    def grid(self, stage: str) -> tuple[int, int]:
        return self.results[stage].per_position.shape


def _grid_of(extraction: Extraction, stage: str) -> tuple[int, int]:
    """(rows, cols) of a stage's token grid, recorded from all tokens at extraction."""
    grids = extraction.root / "grids.json"
    if grids.is_file():
        rows, cols = json.loads(grids.read_text())[stage]
        return rows, cols
    data = load_npz(extraction.chunks(stage)[0])  # an extraction of every token (written before grids.json)
    return int(data["rows"].max()) + 1, int(data["cols"].max()) + 1


class ProbeDiskError(RuntimeError):
    """The probe extraction would not fit the disk budget; the message says what it needs and what to change."""


def estimate_extraction_bytes(adapter, loaders: list, tokens_per_image: int = 0) -> tuple[int, int]:
    """(estimated bytes of the stored states for all images, bytes per image on average) from one image's
    extraction and every image's number of views (fp16 states, int16 labels, int32 image index)."""
    first = loaders[0]()
    states = stage_states(adapter, [first])
    first_views = len(adapter.views(*first.size))
    total = 0.0
    views = [len(adapter.views(*load().size)) for load in loaders]
    for x, rows, _, _ in states.values():
        per_token = x.nbytes / len(rows) + 8  # as `extract` stores them
        per_view_tokens = len(rows) / first_views
        total += sum(per_token * (min(tokens_per_image, v * per_view_tokens) if tokens_per_image
                                  else v * per_view_tokens) for v in views)
    return int(total), int(total / max(len(loaders), 1))


def check_disk(adapter, sets: list[tuple[list, Path, int]], budget_bytes: int | None,
               tokens_per_image: int = 0) -> None:
    """Before extracting anything: the chunks still missing must fit the budget (default: the free space of
    the cache's disk), else ProbeDiskError."""
    import shutil

    needed, per_image, images = 0, 0, 0
    for loaders, root, chunk_images in sets:
        n_chunks = (len(loaders) + chunk_images - 1) // chunk_images
        stages_file = root / "stages.json"
        stages = json.loads(stages_file.read_text()) if stages_file.is_file() else None
        done = 0 if stages is None else sum(all((root / s / f"chunk-{c:05d}.npz").is_file() for s in stages)
                                            for c in range(n_chunks))
        if done < n_chunks:
            total, per_image = estimate_extraction_bytes(adapter, loaders, tokens_per_image)
            needed += total * (n_chunks - done) // n_chunks
            images += len(loaders)
    if not needed:
        return
    root = sets[0][1]
    root.mkdir(parents=True, exist_ok=True)
    allowed = budget_bytes if budget_bytes is not None else shutil.disk_usage(root).free - (1 << 30)
    if needed > allowed:
        raise ProbeDiskError(
            f"positional probes would write ~{needed / 1e9:.1f} GB of hidden states for {images} training images "
            f"({per_image / 1e6:.2f} MB per image: "
            f"{'all tokens' if not tokens_per_image else f'{tokens_per_image} tokens'} per image, every stage, "
            f"fp16) under {root.parent}, but {max(allowed, 0) / 1e9:.1f} GB are allowed: store fewer tokens per "
            "image (--probe-tokens-per-image), use fewer --probe-train images, a larger --probe-disk-budget, or "
            "a --result-cache folder on a larger disk")


def probe_study(vlm, train_spec: str, test_spec: str, epochs: int, chunk_images: int, seed: int,
                disk_budget_bytes: int | None = None, tokens_per_image: int = 0) -> ProbeStudy:
    """Extract the training images (cached on disk, resumable; `tokens_per_image` of each, 0: all), probe
    every stage, and score all probes on the test images in one streamed pass; memoized per worker. The
    disk the extraction needs is checked first (`check_disk`)."""
    from mechanisms.data import cache_root
    from mechanisms.data.image_sets import image_set

    key = ("probe-study", train_spec, test_spec, epochs, chunk_images, seed, tokens_per_image)

    def compute() -> ProbeStudy:
        loaders, fingerprint = image_set(train_spec)
        stored = f"{fingerprint}:{chunk_images}" + (f":{tokens_per_image}-tokens:{seed}" if tokens_per_image else "")
        root = extraction_root(cache_root(), vlm.fingerprint, stored)
        check_disk(vlm.adapter, [(loaders, root, chunk_images)], disk_budget_bytes, tokens_per_image)
        train = extract(vlm.adapter, loaders, root, chunk_images, progress=True, tokens_per_image=tokens_per_image,
                        seed=seed)
        probes = {}
        for stage in train.stages:
            rows, cols = _grid_of(train, stage)
            probes[stage] = fit_probe(train, stage, rows, cols, epochs=epochs, seed=seed)
        rows, cols = _grid_of(train, sites.PROJECTOR)
        probes[_CONTROL] = fit_probe(train, sites.PROJECTOR, rows, cols, epochs=epochs, seed=seed,
                                     shuffle_labels=True)
        test_loaders, _ = image_set(test_spec)
        stage_of = {stage: stage for stage in train.stages} | {_CONTROL: sites.PROJECTOR}
        results = evaluate_streamed(vlm.adapter, test_loaders, probes, chunk_images, stage_of)
        control = results.pop(_CONTROL)
        return ProbeStudy(results, control)

    return vlm.memo(key, compute)


_CONTROL = "shuffled-label control"

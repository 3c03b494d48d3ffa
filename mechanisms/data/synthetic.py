"""Synthetic shape scenes, written as a COCO-format dataset with exact object-removed counterfactuals.

Why synthetic: no real dataset can be downloaded where this suite is built and tested, yet every claim
needs images with instance masks, unique categories per image, and for the hallucination control an
image of the same scene *without* the object. A scene here is a small data record (`SceneSpec`);
rendering it with or without one object gives the pair pixel-exactly (every object draws its noise
from its own seed, so removing one object changes no other pixel).

Everything is deterministic from `(SceneConfig, seed)`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Category names read like class names: "<colour> <shape>". Colour and shape are both unique, so either
# identifies the class; the model still has to bind the name to the right image region.
CATEGORIES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red circle", (220, 30, 30)),
    ("blue square", (30, 60, 220)),
    ("green triangle", (20, 160, 40)),
    ("yellow star", (235, 190, 0)),
    ("purple diamond", (140, 40, 180)),
    ("orange cross", (245, 120, 0)),
    ("cyan hexagon", (0, 185, 200)),
    ("brown ring", (120, 70, 20)),
    ("pink pentagon", (240, 100, 180)),
    ("black arrow", (25, 25, 25)),
)
CATEGORY_NAMES: tuple[str, ...] = tuple(name for name, _ in CATEGORIES)

# Pairs that tend to appear together (like "fork" and "knife" in COCO): context a model can learn, and
# so a source of hallucinations on object-removed images.
DEFAULT_COOCCURRENCE: tuple[tuple[str, str], ...] = (
    ("red circle", "blue square"),
    ("green triangle", "yellow star"),
    ("purple diamond", "orange cross"),
    ("cyan hexagon", "brown ring"),
    ("pink pentagon", "black arrow"),
)

# Unit-square outlines of the polygonal shapes (each touches all four sides, so the mask's bounding
# box is the placement box).
_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(0, 0), (1, 0), (1, 1), (0, 1)],
    "triangle": [(0.5, 0), (1, 1), (0, 1)],
    "diamond": [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)],
    "cross": [(0.33, 0), (0.67, 0), (0.67, 0.33), (1, 0.33), (1, 0.67), (0.67, 0.67), (0.67, 1),
              (0.33, 1), (0.33, 0.67), (0, 0.67), (0, 0.33), (0.33, 0.33)],
    "hexagon": [(0.25, 0), (0.75, 0), (1, 0.5), (0.75, 1), (0.25, 1), (0, 0.5)],
    "arrow": [(0, 0.3), (0.55, 0.3), (0.55, 0), (1, 0.5), (0.55, 1), (0.55, 0.7), (0, 0.7)],
}


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    pts = []
    for i in range(2 * points):
        radius = 1.0 if i % 2 == 0 else inner
        angle = -math.pi / 2 + i * math.pi / points
        pts.append((math.cos(angle) * radius, math.sin(angle) * radius))
    return _fit_unit(pts)


def _regular(n: int) -> list[tuple[float, float]]:
    return _fit_unit([(math.cos(-math.pi / 2 + 2 * math.pi * i / n),
                       math.sin(-math.pi / 2 + 2 * math.pi * i / n)) for i in range(n)])


def _fit_unit(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    xs, ys = zip(*pts)
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return [((x - x0) / (x1 - x0), (y - y0) / (y1 - y0)) for x, y in pts]


_POLYGONS["star"] = _star()
_POLYGONS["pentagon"] = _regular(5)


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the scene distribution. Defaults follow the paper's dataset filters (§6.1)."""

    min_side: int = 120
    max_side: int = 400
    max_objects: int = 5
    object_count_weights: tuple[float, ...] = (0.2, 0.25, 0.25, 0.15, 0.15)
    min_area_fraction: float = 0.004  # of the image, as the paper's filter
    max_area_fraction: float = 0.6
    # probability that the next object is a co-occurrence partner of an object already placed
    cooccurrence_strength: float = 0.6
    cooccurrence: tuple[tuple[str, str], ...] = DEFAULT_COOCCURRENCE
    background_noise: float = 7.0
    object_noise: float = 9.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SceneConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        for key in ("object_count_weights",):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        if "cooccurrence" in kwargs:
            kwargs["cooccurrence"] = tuple(tuple(p) for p in kwargs["cooccurrence"])
        return cls(**kwargs)


@dataclass(frozen=True)
class ObjectSpec:
    category_id: int  # 1-based, as COCO
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in image pixels
    seed: int

    @property
    def name(self) -> str:
        return CATEGORY_NAMES[self.category_id - 1]


@dataclass(frozen=True)
class SceneSpec:
    image_id: int
    width: int
    height: int
    seed: int
    objects: tuple[ObjectSpec, ...] = field(default_factory=tuple)


def sample_scene(rng: np.random.Generator, image_id: int, config: SceneConfig) -> SceneSpec:
    width = int(rng.integers(config.min_side, config.max_side + 1))
    height = int(rng.integers(config.min_side, config.max_side + 1))
    weights = np.asarray(config.object_count_weights[: config.max_objects], dtype=float)
    n_objects = int(rng.choice(np.arange(1, len(weights) + 1), p=weights / weights.sum()))
    categories = _sample_categories(rng, n_objects, config)

    placed: list[ObjectSpec] = []
    image_area = width * height
    for index, category_id in enumerate(categories):
        # Big objects only when few share the image; log-uniform so small objects are common too.
        upper = min(config.max_area_fraction * 0.8, 0.9 / (len(categories) + 0.5))
        lower = config.min_area_fraction * 1.6
        for _attempt in range(40):
            # skewed towards the upper end: a median object of a few percent of the image, as in COCO
            fraction = math.exp(math.log(lower) + rng.uniform() ** 0.5 * math.log(upper / lower))
            aspect = math.exp(rng.uniform(math.log(0.6), math.log(1.7)))
            box_w = int(round(math.sqrt(fraction * image_area * aspect)))
            box_h = int(round(math.sqrt(fraction * image_area / aspect)))
            if not (6 <= box_w <= width - 2 and 6 <= box_h <= height - 2):
                continue
            x0 = int(rng.integers(1, width - box_w))
            y0 = int(rng.integers(1, height - box_h))
            box = (x0, y0, x0 + box_w, y0 + box_h)
            if any(_boxes_touch(box, other.box, gap=3) for other in placed):
                continue
            candidate = ObjectSpec(category_id, box, int(rng.integers(0, 2**31 - 1)))
            area = int(render_mask(candidate, width, height).sum())
            if config.min_area_fraction <= area / image_area <= config.max_area_fraction:
                placed.append(candidate)
                break
    if not placed:  # always at least one object: retry with a fresh draw
        return sample_scene(rng, image_id, config)
    return SceneSpec(image_id, width, height, int(rng.integers(0, 2**31 - 1)), tuple(placed))


def _sample_categories(rng: np.random.Generator, n: int, config: SceneConfig) -> list[int]:
    partners: dict[int, set[int]] = {}
    for a, b in config.cooccurrence:
        ia, ib = CATEGORY_NAMES.index(a) + 1, CATEGORY_NAMES.index(b) + 1
        partners.setdefault(ia, set()).add(ib)
        partners.setdefault(ib, set()).add(ia)
    chosen = [int(rng.integers(1, len(CATEGORY_NAMES) + 1))]
    while len(chosen) < n:
        free_partners = sorted({p for c in chosen for p in partners.get(c, ())} - set(chosen))
        if free_partners and rng.random() < config.cooccurrence_strength:
            chosen.append(int(rng.choice(free_partners)))
        else:
            remaining = [c for c in range(1, len(CATEGORY_NAMES) + 1) if c not in chosen]
            chosen.append(int(rng.choice(remaining)))
    return chosen


def _boxes_touch(a, b, gap: int) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def render_mask(obj: ObjectSpec, width: int, height: int) -> np.ndarray:
    """Boolean [height, width] mask of the object's pixels."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = obj.box
    shape = obj.name.split()[1]
    # PIL's outline coordinates are inclusive: the last pixel column of the box is x1 - 1.
    w, h = x1 - 1 - x0, y1 - 1 - y0
    if shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=255)
    elif shape == "ring":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=255)
        inset_x, inset_y = 0.27 * w, 0.27 * h
        draw.ellipse((x0 + inset_x, y0 + inset_y, x1 - 1 - inset_x, y1 - 1 - inset_y), fill=0)
    else:
        draw.polygon([(x0 + u * w, y0 + v * h) for u, v in _POLYGONS[shape]], fill=255)
    return np.asarray(canvas) > 0


def render_scene(scene: SceneSpec, config: SceneConfig = SceneConfig(),
                 without: int | None = None) -> Image.Image:
    """Render a scene; `without` is the index of an object to leave out (the exact counterfactual)."""
    rng = np.random.default_rng(scene.seed)
    h, w = scene.height, scene.width
    base = rng.uniform(150, 235, size=3)
    tilt = rng.uniform(-35, 35, size=(2, 3))
    ys, xs = np.mgrid[0:h, 0:w]
    image = (base[None, None, :]
             + tilt[0][None, None, :] * (xs[..., None] / w - 0.5)
             + tilt[1][None, None, :] * (ys[..., None] / h - 0.5))
    # low-frequency texture: a coarse random grid upsampled bilinearly
    coarse = rng.normal(0, 14, size=(6, 6, 3)).astype(np.float32)
    texture = np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((w, h), Image.BILINEAR))
                        for c in range(3)], axis=-1)
    image = image + texture + rng.normal(0, config.background_noise, size=(h, w, 3))
    for index, obj in enumerate(scene.objects):
        if index == without:
            continue
        mask = render_mask(obj, w, h)
        obj_rng = np.random.default_rng(obj.seed)
        colour = np.asarray(CATEGORIES[obj.category_id - 1][1], dtype=float)
        shade = obj_rng.uniform(-18, 18, size=3)
        pixels = colour + shade + obj_rng.normal(0, config.object_noise, size=(h, w, 3))
        image = np.where(mask[..., None], pixels, image)
    return Image.fromarray(np.clip(image, 0, 255).round().astype(np.uint8), "RGB")


def generate_scenes(n: int, seed: int, config: SceneConfig = SceneConfig(),
                    first_image_id: int = 1) -> list[SceneSpec]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, first_image_id + i, config) for i in range(n)]


# ---------------------------------------------------------------------------------------------------
# Writing a dataset folder


def write_dataset(root: str | Path, n_images: int, seed: int, config: SceneConfig = SceneConfig(),
                  name: str | None = None) -> Path:
    """Write images, counterfactuals, a COCO instances JSON (RLE masks via pycocotools) and a manifest.

    The manifest is written last (atomically), so a folder with a manifest is a complete dataset.
    """
    from pycocotools import mask as mask_utils

    from mechanisms.storage import atomic_write_json

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "counterfactuals").mkdir(parents=True, exist_ok=True)
    scenes = generate_scenes(n_images, seed, config)
    images, annotations, counterfactuals = [], [], []
    annotation_id = 1
    for scene in scenes:
        file_name = f"{scene.image_id:06d}.png"
        render_scene(scene, config).save(root / "images" / file_name)
        images.append({"id": scene.image_id, "file_name": file_name,
                       "width": scene.width, "height": scene.height})
        for index, obj in enumerate(scene.objects):
            mask = render_mask(obj, scene.width, scene.height)
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            bbox = [float(v) for v in mask_utils.toBbox(rle)]
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({"id": annotation_id, "image_id": scene.image_id,
                                "category_id": obj.category_id, "segmentation": rle,
                                "area": float(mask_utils.area(mask_utils.encode(
                                    np.asfortranarray(mask.astype(np.uint8))))),
                                "bbox": bbox, "iscrowd": 0})
            cf_name = f"{scene.image_id:06d}_{annotation_id:06d}.png"
            render_scene(scene, config, without=index).save(root / "counterfactuals" / cf_name)
            counterfactuals.append({"image_id": scene.image_id, "annotation_id": annotation_id,
                                    "file_name": f"counterfactuals/{cf_name}"})
            annotation_id += 1
    instances = {
        "info": {"description": "vlm-mechanisms synthetic shape scenes", "seed": seed},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"}
                       for i, n in enumerate(CATEGORY_NAMES)],
    }
    atomic_write_json(root / "instances.json", instances)
    manifest = {
        "format": "vlm-mechanisms/dataset-v1",
        "name": name or f"synthetic-seed{seed}-n{n_images}",
        "instances": "instances.json",
        "images_dir": "images",
        "counterfactuals": counterfactuals,
        "generator": {"kind": "synthetic", "seed": seed, "n_images": n_images,
                      "config": config.to_dict()},
    }
    atomic_write_json(root / "manifest.json", manifest)
    return root

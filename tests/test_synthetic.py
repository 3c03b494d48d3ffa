"""The synthetic shape scenes (mechanisms.data.synthetic): determinism, constraints, exact counterfactuals."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mechanisms.data.synthetic import (
    CATEGORY_NAMES,
    DEFAULT_COOCCURRENCE,
    ObjectSpec,
    SceneConfig,
    SceneSpec,
    generate_scenes,
    render_mask,
    render_scene,
    write_dataset,
)
from mechanisms.geometry import mask_bbox

SEED = 1234
N_SCENES = 60


@pytest.fixture(scope="module")
def scenes() -> list[SceneSpec]:
    return generate_scenes(N_SCENES, SEED)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("synthetic") / "set", 4, SEED)


# ----- scene sampling ---------------------------------------------------------------------------------


def test_generate_scenes_deterministic(scenes):
    """The same seed gives equal scene records; another seed gives different ones."""
    assert generate_scenes(N_SCENES, SEED) == scenes
    assert generate_scenes(N_SCENES, SEED + 1) != scenes
    assert [s.image_id for s in scenes] == list(range(1, N_SCENES + 1))


def test_generate_scenes_prefix_stable(scenes):
    """Asking for fewer scenes gives a prefix of the longer list (scenes are drawn in sequence)."""
    assert generate_scenes(10, SEED) == scenes[:10]


def test_scene_object_counts_categories_and_sides(scenes):
    """Each scene has 1..5 objects with unique categories and sides within [120, 400]."""
    config = SceneConfig()
    for scene in scenes:
        assert 1 <= len(scene.objects) <= config.max_objects
        categories = [o.category_id for o in scene.objects]
        assert len(set(categories)) == len(categories)
        assert all(1 <= c <= len(CATEGORY_NAMES) for c in categories)
        assert config.min_side <= scene.width <= config.max_side
        assert config.min_side <= scene.height <= config.max_side


def test_scene_object_counts_cover_range(scenes):
    """The object-count distribution is actually used: several counts occur, including 1 and 5."""
    counts = Counter(len(s.objects) for s in scenes)
    assert counts[1] > 0 and counts[5] > 0 and len(counts) >= 4


def test_object_mask_area_fractions_within_limits(scenes):
    """Every object's mask covers between 0.4% and 60% of its image."""
    config = SceneConfig()
    for scene in scenes:
        for obj in scene.objects:
            fraction = render_mask(obj, scene.width, scene.height).sum() / (scene.width * scene.height)
            assert config.min_area_fraction <= fraction <= config.max_area_fraction, (scene.image_id, obj)


def test_object_boxes_inside_image_and_disjoint(scenes):
    """Object boxes lie inside the image and no two boxes in a scene overlap."""
    for scene in scenes:
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= scene.width and 0 <= y0 < y1 <= scene.height
        for a, b in itertools.combinations(scene.objects, 2):
            overlap_x = min(a.box[2], b.box[2]) - max(a.box[0], b.box[0])
            overlap_y = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
            assert overlap_x <= 0 or overlap_y <= 0, (scene.image_id, a.box, b.box)


def test_mask_bounding_box_equals_object_box(scenes):
    """Every shape touches all four sides of its placement box: mask bbox == ObjectSpec.box (exclusive)."""
    shapes_seen = set()
    for scene in scenes:
        for obj in scene.objects:
            mask = render_mask(obj, scene.width, scene.height)
            assert mask.shape == (scene.height, scene.width) and mask.dtype == bool
            assert mask_bbox(mask).as_list() == [float(v) for v in obj.box], (obj.name, obj.box)
            shapes_seen.add(obj.name)
    assert len(shapes_seen) == len(CATEGORY_NAMES)  # every shape was checked


@pytest.mark.parametrize("name", CATEGORY_NAMES)
def test_every_shape_mask_fills_its_box_sides(name):
    """Each category's mask, drawn in a fixed odd-sized box, has exactly that bounding box."""
    obj = ObjectSpec(CATEGORY_NAMES.index(name) + 1, (13, 7, 13 + 41, 7 + 29), seed=0)
    mask = render_mask(obj, 80, 50)
    assert mask_bbox(mask).as_list() == [13.0, 7.0, 54.0, 36.0]
    assert 0 < mask.sum() < 41 * 29 or name == "blue square"


def test_partner_categories_cooccur_more_often():
    """Over 400 scenes each configured partner pair co-occurs more often than non-partner pairs."""
    pair_counts: Counter = Counter()
    for scene in generate_scenes(400, 99):
        names = sorted(o.name for o in scene.objects)
        pair_counts.update(itertools.combinations(names, 2))
    partners = {tuple(sorted(p)) for p in DEFAULT_COOCCURRENCE}
    others = [pair_counts[p] for p in itertools.combinations(sorted(CATEGORY_NAMES), 2) if p not in partners]
    assert pair_counts[("blue square", "red circle")] > pair_counts[("green triangle", "red circle")]
    for pair in partners:
        assert pair_counts[pair] > max(others), (pair, pair_counts[pair], max(others))


def test_no_cooccurrence_when_strength_zero():
    """With co-occurrence strength 0 partner pairs are no more common than others (a control)."""
    config = SceneConfig(cooccurrence_strength=0.0)
    pair_counts: Counter = Counter()
    for scene in generate_scenes(400, 99, config):
        pair_counts.update(itertools.combinations(sorted(o.name for o in scene.objects), 2))
    partners = {tuple(sorted(p)) for p in DEFAULT_COOCCURRENCE}
    partner_mean = np.mean([pair_counts[p] for p in partners])
    other_mean = np.mean([pair_counts[p] for p in itertools.combinations(sorted(CATEGORY_NAMES), 2)
                          if p not in partners])
    assert partner_mean < 1.5 * other_mean


def test_scene_config_dict_round_trip():
    """SceneConfig survives to_dict / JSON / from_dict (tuples restored)."""
    config = SceneConfig(max_objects=3, cooccurrence_strength=0.2)
    assert SceneConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# ----- rendering --------------------------------------------------------------------------------------


def test_render_scene_deterministic(scenes):
    """Rendering the same scene twice gives identical RGB bytes of the scene's size."""
    for scene in scenes[:5]:
        first, second = render_scene(scene), render_scene(scene)
        assert first.mode == "RGB" and first.size == (scene.width, scene.height)
        assert first.tobytes() == second.tobytes()


def test_counterfactual_differs_only_inside_removed_object(scenes):
    """render_scene(without=i) differs from the full render only inside object i's mask, and does differ."""
    checked = 0
    for scene in scenes[:12]:
        full = np.asarray(render_scene(scene))
        for index, obj in enumerate(scene.objects):
            removed = np.asarray(render_scene(scene, without=index))
            changed = (full != removed).any(axis=-1)
            mask = render_mask(obj, scene.width, scene.height)
            assert not (changed & ~mask).any(), (scene.image_id, index)
            assert changed.any()
            assert changed.sum() > 0.5 * mask.sum()  # the object is really gone, not just a few pixels
            checked += 1
    assert checked >= 20


def test_without_out_of_range_renders_everything(scenes):
    """`without=None` and an index past the last object both render the full scene."""
    scene = scenes[0]
    full = render_scene(scene).tobytes()
    assert render_scene(scene, without=None).tobytes() == full
    assert render_scene(scene, without=len(scene.objects)).tobytes() == full


# ----- writing a dataset folder -----------------------------------------------------------------------


def test_write_dataset_layout(written):
    """write_dataset writes manifest.json, instances.json, the images and one counterfactual per object."""
    manifest = json.loads((written / "manifest.json").read_text())
    instances = json.loads((written / "instances.json").read_text())
    assert manifest["format"] == "vlm-mechanisms/dataset-v1"
    assert manifest["instances"] == "instances.json" and manifest["images_dir"] == "images"
    assert manifest["generator"]["seed"] == SEED and manifest["generator"]["n_images"] == 4
    assert len(instances["images"]) == 4
    assert [c["name"] for c in instances["categories"]] == list(CATEGORY_NAMES)
    for image in instances["images"]:
        with Image.open(written / "images" / image["file_name"]) as im:
            assert im.size == (image["width"], image["height"]) and im.mode == "RGB"
    assert len(manifest["counterfactuals"]) == len(instances["annotations"])
    assert {c["annotation_id"] for c in manifest["counterfactuals"]} == {a["id"] for a in instances["annotations"]}
    for cf in manifest["counterfactuals"]:
        assert (written / cf["file_name"]).is_file()
    assert not list(written.glob(".*.tmp"))  # atomic writes left nothing behind


def test_written_images_match_rendering(written):
    """The written image and counterfactual PNGs are exactly the renders of the seed's scenes."""
    scenes = generate_scenes(4, SEED)
    manifest = json.loads((written / "manifest.json").read_text())
    instances = json.loads((written / "instances.json").read_text())
    cf_by_ann = {c["annotation_id"]: c["file_name"] for c in manifest["counterfactuals"]}
    anns_by_image: dict = {}
    for ann in sorted(instances["annotations"], key=lambda a: a["id"]):
        anns_by_image.setdefault(ann["image_id"], []).append(ann)
    for scene in scenes:
        image = np.asarray(Image.open(written / "images" / f"{scene.image_id:06d}.png"))
        np.testing.assert_array_equal(image, np.asarray(render_scene(scene)))
        anns = anns_by_image[scene.image_id]
        assert [a["category_id"] for a in anns] == [o.category_id for o in scene.objects]
        for index, ann in enumerate(anns):
            cf = np.asarray(Image.open(written / cf_by_ann[ann["id"]]))
            np.testing.assert_array_equal(cf, np.asarray(render_scene(scene, without=index)))


def test_rle_segmentations_decode_to_rendered_masks(written):
    """Each annotation's RLE decodes (pycocotools) to render_mask; bbox and area agree with the mask."""
    from pycocotools import mask as mask_utils

    scenes = {s.image_id: s for s in generate_scenes(4, SEED)}
    instances = json.loads((written / "instances.json").read_text())
    by_image: dict = {}
    for ann in sorted(instances["annotations"], key=lambda a: a["id"]):
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image_id, anns in by_image.items():
        scene = scenes[image_id]
        for obj, ann in zip(scene.objects, anns, strict=True):
            rle = dict(ann["segmentation"])
            assert rle["size"] == [scene.height, scene.width]
            decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
            expected = render_mask(obj, scene.width, scene.height)
            np.testing.assert_array_equal(decoded.astype(bool), expected)
            x0, y0, x1, y1 = obj.box
            assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0]
            assert ann["area"] == float(expected.sum())
            assert ann["iscrowd"] == 0

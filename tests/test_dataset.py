"""Reading COCO-format dataset folders (mechanisms.data.dataset): good sets load, bad entries are counted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mechanisms.data import DatasetError, load_dataset
from mechanisms.data.synthetic import write_dataset
from mechanisms.geometry import Box

SEED = 77
N_IMAGES = 3


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One synthetic set written per module; tests that damage it work on a copy."""
    return write_dataset(tmp_path_factory.mktemp("template") / "set", N_IMAGES, SEED)


@pytest.fixture
def folder(template, tmp_path) -> Path:
    """A private copy of the template set that a test may modify."""
    return Path(shutil.copytree(template, tmp_path / "set"))


def _instances(folder: Path) -> dict:
    return json.loads((folder / "instances.json").read_text())


def _rewrite(folder: Path, instances: dict) -> None:
    (folder / "instances.json").write_text(json.dumps(instances))


def _add_annotation(instances: dict, **changes) -> dict:
    """Append a copy of the first annotation with a fresh id and the given fields changed."""
    ann = dict(instances["annotations"][0])
    ann["id"] = max(a["id"] for a in instances["annotations"]) + 1
    ann.update(changes)
    instances["annotations"].append(ann)
    return ann


# ----- a good synthetic set ---------------------------------------------------------------------------


def test_load_synthetic_counts_and_boxes(template):
    """Every annotation becomes one sample whose box is its COCO bbox; nothing is skipped."""
    dataset = load_dataset(template)
    instances = _instances(template)
    assert len(dataset.samples) == len(instances["annotations"])
    assert not dataset.skipped
    assert dataset.name == f"synthetic-seed{SEED}-n{N_IMAGES}"
    assert dataset.categories == [c["name"] for c in instances["categories"]]
    anns = {a["id"]: a for a in instances["annotations"]}
    images = {i["id"]: i for i in instances["images"]}
    for sample in dataset.samples:
        ann = anns[sample.annotation_id]
        assert sample.box == Box.from_coco(ann["bbox"])
        assert sample.image_id == ann["image_id"]
        assert (sample.width, sample.height) == (images[sample.image_id]["width"], images[sample.image_id]["height"])
        assert sample.image_path.is_file()
    assert dataset.describe()["n_images"] == N_IMAGES


def test_masks_images_and_counterfactuals(template):
    """Masks are non-empty with the recorded area; images and counterfactuals open as RGB of the right size."""
    dataset = load_dataset(template)
    assert dataset.with_counterfactuals() == dataset.samples
    for sample in dataset.samples:
        mask = dataset.mask(sample)
        assert mask.dtype == bool and mask.shape == (sample.height, sample.width)
        assert mask.sum() == sample.area > 0
        assert sample.counterfactual_path is not None and sample.counterfactual_path.is_file()
        for image in (dataset.image(sample), dataset.counterfactual(sample)):
            assert image.mode == "RGB" and image.size == (sample.width, sample.height)


def test_fingerprint_stable_and_content_sensitive(folder):
    """Loading twice gives the same fingerprint; changing the annotations changes it."""
    first = load_dataset(folder).fingerprint
    assert load_dataset(folder).fingerprint == first
    instances = _instances(folder)
    instances["info"]["description"] = "changed"
    _rewrite(folder, instances)
    assert load_dataset(folder).fingerprint != first


def test_select_deterministic_subset(template):
    """select(k, seed) is a deterministic k-subset in dataset order; None or a large k gives everything."""
    dataset = load_dataset(template)
    n = len(dataset.samples)
    assert n >= 3
    k = n - 2
    chosen = dataset.select(k, seed=5)
    assert chosen == dataset.select(k, seed=5)
    assert len(chosen) == k and len({s.annotation_id for s in chosen}) == k
    order = [dataset.samples.index(s) for s in chosen]
    assert order == sorted(order)
    assert dataset.select(None, seed=5) == dataset.samples
    assert dataset.select(n + 10, seed=5) == dataset.samples
    assert dataset.select(0, seed=5) == []


# ----- unreadable folders and files -------------------------------------------------------------------


def test_malformed_instances_json_names_the_file(folder):
    """Broken JSON in instances.json raises DatasetError naming that file."""
    path = folder / "instances.json"
    path.write_text('{"images": [')
    with pytest.raises(DatasetError, match="not valid JSON") as excinfo:
        load_dataset(folder)
    assert str(path) in str(excinfo.value)


def test_instances_json_not_an_object(folder):
    """A JSON list at the top level raises DatasetError naming the file."""
    (folder / "instances.json").write_text("[]")
    with pytest.raises(DatasetError, match="instances.json"):
        load_dataset(folder)


def test_missing_instances_file_named_in_manifest(folder):
    """A manifest pointing at a missing instances file raises DatasetError naming it."""
    (folder / "instances.json").unlink()
    with pytest.raises(DatasetError, match="instances.json: file not found"):
        load_dataset(folder)


def test_folder_without_manifest_or_instances(tmp_path):
    """A folder with neither manifest.json nor instances*.json raises DatasetError naming the folder."""
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="neither a manifest.json nor an instances") as excinfo:
        load_dataset(tmp_path)
    assert str(tmp_path) in str(excinfo.value)


def test_missing_folder(tmp_path):
    """A path that is not a folder raises DatasetError."""
    with pytest.raises(DatasetError, match="no such dataset folder"):
        load_dataset(tmp_path / "nope")


@pytest.mark.parametrize("key", ["annotations", "images", "categories"])
def test_missing_top_level_key(folder, key):
    """An instances file without one of its three lists raises DatasetError naming the file and key."""
    instances = _instances(folder)
    del instances[key]
    _rewrite(folder, instances)
    with pytest.raises(DatasetError, match=repr(key)) as excinfo:
        load_dataset(folder)
    assert str(folder / "instances.json") in str(excinfo.value)


# ----- bad entries are skipped and counted ------------------------------------------------------------


def test_annotation_for_absent_image_is_counted(folder):
    """An annotation whose image_id is not among the images is skipped under its reason."""
    instances = _instances(folder)
    n = len(instances["annotations"])
    _add_annotation(instances, image_id=99999)
    _rewrite(folder, instances)
    dataset = load_dataset(folder)
    assert len(dataset.samples) == n
    assert dataset.skipped == {"annotation for an absent image": 1}


def test_missing_image_file_skips_its_annotations(folder):
    """Deleting an image file skips (and counts) exactly that image's annotations."""
    instances = _instances(folder)
    first = instances["images"][0]
    on_first = sum(a["image_id"] == first["id"] for a in instances["annotations"])
    (folder / "images" / first["file_name"]).unlink()
    dataset = load_dataset(folder)
    assert dataset.skipped == {"missing image file": on_first}
    assert len(dataset.samples) == len(instances["annotations"]) - on_first
    assert all(s.image_id != first["id"] for s in dataset.samples)


def test_empty_segmentation_is_counted_as_empty_mask(folder):
    """An annotation with segmentation [] is skipped as an empty mask."""
    instances = _instances(folder)
    _add_annotation(instances, segmentation=[])
    _rewrite(folder, instances)
    dataset = load_dataset(folder)
    assert dataset.skipped == {"empty mask": 1}
    assert len(dataset.samples) == len(instances["annotations"]) - 1


def test_zero_area_polygon_is_counted_as_empty_mask(folder):
    """A polygon whose points all coincide rasterises to nothing and is skipped as an empty mask."""
    instances = _instances(folder)
    _add_annotation(instances, segmentation=[[10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0]])
    _rewrite(folder, instances)
    dataset = load_dataset(folder)
    assert dataset.skipped == {"empty mask": 1}


def test_polygon_segmentation_loads(folder):
    """A valid polygon segmentation (COCO's other format) loads with the polygon's mask."""
    instances = _instances(folder)
    ann = _add_annotation(instances, segmentation=[[10, 10, 30, 10, 30, 20, 10, 20]], bbox=[10, 10, 20, 10])
    _rewrite(folder, instances)
    dataset = load_dataset(folder)
    assert not dataset.skipped
    sample = next(s for s in dataset.samples if s.annotation_id == ann["id"])
    mask = dataset.mask(sample)
    ys, xs = np.nonzero(mask)
    assert 150 <= mask.sum() <= 260 and xs.min() >= 9 and xs.max() <= 30 and ys.min() >= 9 and ys.max() <= 20
    assert sample.counterfactual_path is None  # not listed in the manifest


def test_crowd_annotation_is_counted(folder):
    """iscrowd=1 annotations are skipped as crowd annotations."""
    instances = _instances(folder)
    instances["annotations"][0]["iscrowd"] = 1
    _rewrite(folder, instances)
    dataset = load_dataset(folder)
    assert dataset.skipped == {"crowd annotation": 1}


@pytest.mark.parametrize("changes,reason", [
    ({"category_id": 4242}, "unknown category"),
    ({"bbox": [1, 2, 0, 5]}, "degenerate box"),
    ({"bbox": [1, 2, 3]}, "malformed box"),
])
def test_other_bad_annotations_are_counted(folder, changes, reason):
    """Unknown categories and degenerate boxes are skipped under their reason."""
    instances = _instances(folder)
    _add_annotation(instances, **changes)
    _rewrite(folder, instances)
    assert load_dataset(folder).skipped == {reason: 1}


def test_annotation_missing_a_key_is_counted(folder):
    """An annotation without a bbox is skipped, not a crash."""
    instances = _instances(folder)
    ann = _add_annotation(instances)
    del ann["bbox"]
    _rewrite(folder, instances)
    assert load_dataset(folder).skipped == {"annotation missing a required key": 1}


def test_missing_counterfactual_image_is_counted(folder):
    """A listed counterfactual that is missing on disk is counted; the sample stays, without one."""
    manifest = json.loads((folder / "manifest.json").read_text())
    gone = manifest["counterfactuals"][0]
    (folder / gone["file_name"]).unlink()
    dataset = load_dataset(folder)
    assert dataset.skipped == {"missing counterfactual image": 1}
    sample = next(s for s in dataset.samples if s.annotation_id == gone["annotation_id"])
    assert sample.counterfactual_path is None
    assert len(dataset.with_counterfactuals()) == len(dataset.samples) - 1
    with pytest.raises(DatasetError, match=str(gone["annotation_id"])):
        dataset.counterfactual(sample)


# ----- image modes ------------------------------------------------------------------------------------


def test_grayscale_and_rgba_images_are_returned_as_rgb(folder):
    """'L' and 'RGBA' image files come back from dataset.image() as RGB of the original size."""
    instances = _instances(folder)
    gray_info, rgba_info = instances["images"][0], instances["images"][1]
    gray_path, rgba_path = folder / "images" / gray_info["file_name"], folder / "images" / rgba_info["file_name"]
    Image.open(gray_path).convert("L").save(gray_path)
    rgba = Image.open(rgba_path).convert("RGBA")
    alpha = np.full((rgba.height, rgba.width), 255, dtype=np.uint8)
    alpha[:, : rgba.width // 2] = 0  # left half fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(rgba_path)
    assert Image.open(gray_path).mode == "L" and Image.open(rgba_path).mode == "RGBA"

    dataset = load_dataset(folder)
    gray_sample = next(s for s in dataset.samples if s.image_id == gray_info["id"])
    rgba_sample = next(s for s in dataset.samples if s.image_id == rgba_info["id"])
    gray = dataset.image(gray_sample)
    assert gray.mode == "RGB" and gray.size == (gray_info["width"], gray_info["height"])
    pixels = np.asarray(gray)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    out = dataset.image(rgba_sample)
    assert out.mode == "RGB" and out.size == (rgba_info["width"], rgba_info["height"])
    pixels = np.asarray(out)
    assert (pixels[:, : rgba.width // 2] == 255).all()  # transparent -> white background
    np.testing.assert_array_equal(pixels[:, rgba.width // 2:], np.asarray(rgba.convert("RGB"))[:, rgba.width // 2:])


# ----- plain COCO layouts -----------------------------------------------------------------------------


def test_plain_coco_layout_with_images_folder(template, tmp_path):
    """instances_val.json next to images/ (no manifest) loads, without counterfactuals."""
    root = tmp_path / "coco"
    shutil.copytree(template / "images", root / "images")
    shutil.copy(template / "instances.json", root / "instances_val.json")
    dataset = load_dataset(root)
    assert dataset.name == "coco"
    assert len(dataset.samples) == len(_instances(template)["annotations"])
    assert not dataset.skipped
    assert dataset.with_counterfactuals() == []
    assert all(s.image_path.parent == root / "images" for s in dataset.samples)
    assert dataset.image(dataset.samples[0]).mode == "RGB"


def test_plain_coco_layout_with_split_folder(template, tmp_path):
    """annotations/instances_val2017.json with images in val2017/ (COCO's own layout) loads."""
    root = tmp_path / "coco2017"
    shutil.copytree(template / "images", root / "val2017")
    (root / "annotations").mkdir()
    shutil.copy(template / "instances.json", root / "annotations" / "instances_val2017.json")
    dataset = load_dataset(root)
    assert len(dataset.samples) == len(_instances(template)["annotations"])
    assert all(s.image_path.parent == root / "val2017" for s in dataset.samples)


# ----- malformed entries: each is skipped and counted, or raises DatasetError naming the file -------


def _drop_file_name(instances):
    del instances["images"][0]["file_name"]


def _drop_width(instances):
    del instances["images"][0]["width"]


def _polygon(coords):
    def mutate(instances):
        _add_annotation(instances, segmentation=[coords])
    return mutate


def _bbox(value):
    def mutate(instances):
        _add_annotation(instances, bbox=value)
    return mutate


def _rle_of_wrong_size(instances):
    _add_annotation(instances, segmentation={"size": [5, 5], "counts": "abc"})


@pytest.mark.parametrize("mutate", [
    pytest.param(_drop_file_name, id="image-without-file_name"),
    pytest.param(_drop_width, id="image-without-width"),
    pytest.param(_polygon([5, 5]), id="polygon-one-point"),
    pytest.param(_polygon([]), id="polygon-no-points"),
    pytest.param(_polygon([5, 5, 20, 20]), id="polygon-two-points"),
    pytest.param(_bbox(None), id="bbox-null"),
    pytest.param(_bbox(["a", "b", "c", "d"]), id="bbox-strings"),
    pytest.param(_rle_of_wrong_size, id="rle-bad-counts"),
])
def test_malformed_entries_are_counted_or_named(folder, mutate):
    """A malformed entry is either skipped and counted, or raises DatasetError naming instances.json."""
    instances = _instances(folder)
    mutate(instances)
    _rewrite(folder, instances)
    try:
        dataset = load_dataset(folder)
    except DatasetError as err:
        assert "instances.json" in str(err)
        return
    assert sum(dataset.skipped.values()) >= 1
    for sample in dataset.samples:
        assert dataset.mask(sample).sum() == sample.area


def test_duplicate_annotation_ids_are_not_silently_mixed_up(folder):
    """Two annotations sharing an id are rejected or counted; never a sample whose mask is another's."""
    instances = _instances(folder)
    first, other = instances["annotations"][0], instances["annotations"][-1]
    assert first["image_id"] != other["image_id"]
    other["id"] = first["id"]
    _rewrite(folder, instances)
    try:
        dataset = load_dataset(folder)
    except DatasetError:
        return
    for sample in dataset.samples:
        mask = dataset.mask(sample)
        assert mask.shape == (sample.height, sample.width) and mask.sum() == sample.area

"""Baseline competence: before any intervention, the model must localize and classify (§2.3, Table 1).

Every other claim measures drops from this baseline; a model below its floor makes them noise.
"""

from mechanisms.tasks.scoring import IOU_THRESHOLDS
from mechanisms.tasks.specs import BOX, LIST


def test_model_localizes_and_classifies_objects(vlm, dataset, claim):
    """The unmodified model localizes and classifies the evaluation objects above its profile's floor.

    Localization is the paper's score, the mean success rate at IoU 0.5, 0.7 and 0.9 of the box answer;
    classification counts an object as found when its class name appears in the list answer.
    Paper: Table 1, Baseline row
    """
    profile = vlm.profile
    samples = claim.samples(dataset)
    boxes = vlm.ask(BOX, dataset, samples)
    listed = vlm.ask(LIST, dataset, samples)

    for threshold in IOU_THRESHOLDS:
        claim.measure(f"success_at_iou_{threshold}", boxes.success(threshold))
    claim.measure("mean_iou", boxes.ious)
    claim.measure("box_answers_parsed", boxes.parsed)
    claim.note("unparsed box answers (counted as misses)", boxes.failures())
    model_localizes_and_classifies_objects(claim, profile, boxes.outcomes(), listed.detected)


def model_localizes_and_classifies_objects(claim, profile, localization_scores, classification_hits):
    """The rule, on per-object outcomes (also run on the paper's own numbers by `tests/test_paper_tables.py`)."""
    localization = claim.measure("localization_score", localization_scores,
                                 paper=profile.paper_value("baseline", "localization"))
    classification = claim.measure("classification_accuracy", classification_hits,
                                   paper=profile.paper_value("baseline", "classification"))
    claim.expect_at_least(localization, profile.threshold("baseline", "min_localization"),
                          "the model localizes above its floor")
    claim.expect_at_least(classification, profile.threshold("baseline", "min_classification"),
                          "the model classifies above its floor")

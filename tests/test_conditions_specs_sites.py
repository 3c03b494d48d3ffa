"""The three records everything is keyed by: conditions (what was done to the tokens), task specs (what was
asked), sites (where in the model). Their names key caches and report columns, so they are pinned here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechanisms.interventions import conditions as C
from mechanisms.models import sites
from mechanisms.tasks.specs import BINARY, BOX, LIST, TASKS


def all_kinds():
    scores = {1: np.arange(10.0)}
    return [C.BASELINE, C.object_ablation(0), C.object_ablation(-1), C.object_ablation(1, ("global",)),
            C.matched_random_ablation(3), C.random_ablation(16, 2), C.register_ablation(),
            C.top_k_ablation("ig-localization", scores, 8), C.top_matched_ablation("ig-localization", scores),
            C.containerization(2, 5), C.full_shuffle(1),
            C.object_shuffle(1)]


def test_condition_names_are_stable_and_unique():
    names = [c.name for c in all_kinds()]
    ranking = C.top_k_ablation("ig-localization", {1: np.arange(10.0)}, 8).ranking
    assert ranking.startswith("ig-localization@") and len(ranking) == len("ig-localization@") + 10
    assert names == ["baseline", "ablate:object+0", "ablate:object-1", "ablate:object+1@global",
                     "ablate:random-matched+0:seed3", "ablate:random16:seed2", "ablate:register2std",
                     f"ablate:{ranking}-top8", f"ablate:{ranking}-top-matched+0", "container:+2:seed5",
                     "shuffle:all:seed1", "shuffle:object:seed1"]
    assert len(set(names)) == len(names)


def test_condition_labels_and_paper_keys_come_from_the_record():
    labels = {c.name: (c.label, c.paper) for c in all_kinds()}
    assert labels["baseline"] == ("Baseline", ("ablation", "baseline"))
    assert labels["ablate:object-1"] == ("-1 Padding", ("ablation", "object-1"))
    assert labels["ablate:object+1@global"] == ("+1 Padding", ("view_ablation", "global+1"))
    assert labels["ablate:random16:seed2"] == ("Random", ("ablation", "random-16"))
    ig = C.top_k_ablation("ig-localization", {1: np.arange(10.0)}, 8)
    assert labels[ig.name] == ("Integrated Gradients", ("ablation", "integrated-gradients-8"))
    matched = C.top_matched_ablation("ig-localization", {1: np.arange(10.0)})
    assert labels[matched.name][1] == ("ablation", "integrated-gradients-matched")  # Table 5's Gradients row
    assert labels["shuffle:all:seed1"] == ("Full", ("shuffling", "full"))
    assert labels["ablate:random-matched+0:seed3"][1] == ("ablation", "random-matched")  # Table 5's Random row
    assert C.object_ablation(0, ("local",)).view_label == "Local" and C.object_ablation(0).view_label == "Both"


def test_conditions_are_values_and_a_ranking_is_named_by_its_scores():
    """Equal records are equal; a ranking computed differently (other scores) is another condition, so
    cached answers ablated by an old ranking are never reused for a new one."""
    assert C.object_ablation(0) == C.object_ablation(0) and hash(C.object_ablation(0)) == hash(C.object_ablation(0))
    assert C.top_k_ablation("ig-x", {1: np.zeros(3)}, 2) == C.top_k_ablation("ig-x", {1: np.zeros(3)}, 2)
    assert C.top_k_ablation("ig-x", {1: np.zeros(3)}, 2) != C.top_k_ablation("ig-x", {1: np.ones(3)}, 2)
    assert C.top_k_ablation("ig-x", {1: np.zeros(3)}, 2).name != C.top_k_ablation("ig-x", {1: np.ones(3)}, 2).name
    assert C.random_ablation(4, 0) != C.random_ablation(4, 1)
    assert C.BASELINE.edit(None, [], torch.zeros(3, 2), None) is None


def test_task_specs():
    assert [s.task for s in (BOX, LIST, BINARY)] == ["localization", "classification", "classification"]
    assert TASKS == ("localization", "classification")
    assert LIST.per_image and not BOX.per_image and not BINARY.per_image
    assert len({s.name for s in (BOX, LIST, BINARY)}) == 3


@pytest.fixture(scope="module")
def tiny_adapter():
    from mechanisms.models.adapters.llava import load_llava
    from mechanisms.models.registry import REPO_ROOT

    return load_llava(REPO_ROOT / "fixtures/models/tiny-llava", torch.float32, "cpu")


def test_one_scored_token_rule_for_mediation_and_attribution(tiny_adapter):
    """LLaVA's box: the digits that carry a choice, not the "0." template; a class name or a yes: all tokens."""
    tokenizer = tiny_adapter.tokenizer
    ids = torch.tensor(tokenizer(" [0.12, 0.34, 0.56, 1.00]", add_special_tokens=False).input_ids)
    kept = "".join(tokenizer.decode([int(t)]).strip() for t, keep in zip(ids, BOX.scored_tokens(tiny_adapter, ids))
                   if keep)
    assert kept == "123456" + "00"
    assert LIST.scored_tokens(tiny_adapter, ids).all() and BINARY.scored_tokens(tiny_adapter, ids).all()


def test_site_names():
    assert sites.vision_layer(3) == "vision.03" and sites.llm_layer(12) == "llm.12"
    assert sites.Head(3, 5).name == "llm.03.h05" and sites.Head(3, 5) == (3, 5)
    assert sites.Head(0, 7).kv_head(n_query_heads=8, n_kv_heads=2) == 1  # 4 query heads per key/value head
    assert sites.layer_span(0, 3) == "layers 0-3" and sites.single_layer(4) == "layer 4"
    assert sites.stage_of("llm.03") == "llm" and sites.layer_of("vision.11") == 11
    assert sites.stage_of(sites.PROJECTOR) == sites.PROJECTOR
    assert sites.all_heads(2, 2) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_the_list_answer_stops_at_the_objects_class_in_category_order():
    from types import SimpleNamespace

    sample = SimpleNamespace(category="dog")
    assert LIST.list_answer(sample, ["cat", "dog", "person"]) == ("cat,", "cat, dog")
    assert LIST.list_answer(sample, ["dog", "person"]) == ("", "dog")
    assert LIST.list_answer(sample, ["cat"]) == ("cat,", "cat, dog")  # a class missing from the list is appended


@pytest.fixture(scope="module")
def tiny_dataset():
    from mechanisms.data import resolve_dataset

    return resolve_dataset("synthetic:5:6")


def test_ig_attributes_only_the_class_tokens_inside_the_list_answer(tiny_adapter, tiny_dataset):
    """Classification IG reads "the correct class" where a list answer names it: the scored tokens decode
    to the class name, and the earlier classes of the answer are context, not target."""
    from mechanisms.experiments.attribution import _teacher_forced

    image_ids = {}
    for s in tiny_dataset.samples:
        image_ids.setdefault(s.image_id, []).append(s)
    sample = next(objs[-1] for objs in image_ids.values()
                  if len(tiny_dataset.classes_in_image(objs[0].image_id)) > 1
                  and tiny_dataset.classes_in_image(objs[0].image_id)[-1] == objs[-1].category)
    question = LIST.question(sample, tiny_dataset.categories)
    inputs, span, scored = _teacher_forced(tiny_adapter, tiny_dataset, sample, LIST, tiny_dataset.image(sample),
                                           question)
    answer_ids = inputs["input_ids"][0, span]
    assert 0 < int(scored.sum()) < len(answer_ids)
    assert tiny_adapter.tokenizer.decode(answer_ids[scored]).strip() == sample.category

"""The planted mutants break exactly what they say, on the shipped models of both families."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mechanisms.models.adapters import load_adapter
from mechanisms.models.mutations import MUTATIONS, mutate

REPO_MODELS = {"llava": "fixtures/models/tiny-llava", "internvl": "fixtures/models/tiny-internvl"}


def fresh(family: str):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    return load_adapter(family, root / REPO_MODELS[family], torch.float32, "cpu", None)


def inputs_for(adapter):
    image = Image.new("RGB", (120, 90), (200, 180, 160))
    image.paste((30, 60, 200), (20, 20, 60, 70))
    return adapter.encode([image], ["Where is the blue square?"])


@pytest.fixture(scope="module", params=["llava", "internvl"])
def family(request):
    return request.param


def test_unknown_mutation_is_refused(family):
    with pytest.raises(ValueError, match="choose from"):
        mutate(fresh(family), "nonsense")


def test_untrained_redraws_every_weight_and_is_deterministic(family):
    a, b, original = fresh(family), fresh(family), fresh(family)
    mutate(a, "untrained")
    mutate(b, "untrained")
    for (name, p), q, r in zip(a.model.named_parameters(), b.model.parameters(), original.model.parameters()):
        assert torch.equal(p, q), name
    changed = [not torch.equal(p, r) for p, r in zip(a.model.parameters(), original.model.parameters())]
    assert sum(changed) >= 0.9 * len(changed)  # norms initialised to 1 may coincide with trained ones


def test_vision_reinit_touches_the_tower_only(family):
    mutant, original = fresh(family), fresh(family)
    mutate(mutant, "vision-reinit")
    for (name, p), r in zip(mutant.model.named_parameters(), original.model.parameters()):
        if "vision_tower" in name:
            continue
        assert torch.equal(p, r), name
    tower = [not torch.equal(p, r) for (n, p), r in zip(mutant.model.named_parameters(), original.model.parameters())
             if "vision_tower" in n and p.dim() > 1]
    assert tower and all(tower)


def test_token_permutation_reorders_each_view_the_same_way(family):
    mutant, original = fresh(family), fresh(family)
    mutate(mutant, "token-permutation")
    inputs = inputs_for(original)
    with torch.no_grad():
        a = torch.cat(original.visual_tokens(inputs))
        b = torch.cat(mutant.visual_tokens(inputs))
    assert not torch.equal(a, b)
    per_view = original.views(120, 90)[0].n_tokens
    va, vb = a.reshape(-1, per_view, a.shape[-1]), b.reshape(-1, per_view, b.shape[-1])
    orders = [torch.cdist(vb[v], va[v]).argmin(1) for v in range(va.shape[0])]
    assert all(torch.equal(order, orders[0]) for order in orders)  # one permutation for every view
    assert sorted(orders[0].tolist()) == list(range(per_view))
    assert torch.allclose(vb, va[:, orders[0]])


def test_early_attention_off_changes_only_positions_after_the_image(family):
    mutant, original = fresh(family), fresh(family)
    mutate(mutant, "early-attention-off")
    inputs = inputs_for(original)
    with torch.no_grad():
        a = original.model(**inputs).logits
        b = mutant.model(**inputs).logits
    image = original.image_token_mask(inputs["input_ids"])[0]
    end = int(image.nonzero()[-1]) + 1
    assert torch.equal(a[0, :end], b[0, :end])  # the system text and the image itself run as before
    assert (a[0, end:] - b[0, end:]).abs().amax(-1).min() > 0  # every later position changed
    # a cached continuation lies wholly after the image: generation under the mutation differs too
    forced = torch.cat([inputs["input_ids"], torch.full((1, 3), int(inputs["input_ids"][0, -1]))], 1)
    with torch.no_grad():  # the same tokens fed one at a time on the KV cache
        prefix = mutant.model(**inputs, use_cache=True)
        step = mutant.model(input_ids=forced[:, -3:], past_key_values=prefix.past_key_values,
                            attention_mask=torch.ones_like(forced), use_cache=True).logits
        whole = mutant.model(**{**inputs, "input_ids": forced, "attention_mask": torch.ones_like(forced)}).logits
        unmutated = original.model(**{**inputs, "input_ids": forced, "attention_mask": torch.ones_like(forced)}).logits
    assert torch.allclose(step, whole[:, -3:], atol=1e-4)
    assert not torch.allclose(step, unmutated[:, -3:], atol=1e-3)


def test_every_mutation_is_documented():
    from mechanisms.models import mutations

    for name in MUTATIONS:
        assert f"`{name}`" in mutations.__doc__

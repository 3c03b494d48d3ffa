"""Integrated Gradients over the visual tokens at the LM input (§3.1 iii), computed with captum.

The attributed function is the teacher-forced log-probability of the spec's correct answer given the
image tokens, summed over the tokens the spec scores (the same rule as mediation's perplexity,
`TaskSpec.scored_tokens`): for localization (`BOX`), the choice-carrying digits of the ground-truth box
answer (brackets, commas and LLaVA's leading "0." are template); for classification (`LIST`), the tokens
of the correct class name as the answer to the list prompt. The IG baseline is the mean visual
embedding, the same "no information" point ablation uses. A token's score is the magnitude of its
attribution summed over the hidden dimension (by IG's completeness, that sum is the token's share
of the change in the target from baseline to input).
"""

from __future__ import annotations

import numpy as np
import torch

from mechanisms.data.dataset import Dataset, ObjectSample
from mechanisms.tasks.specs import TaskSpec


def answer_logprob(adapter, input_ids: torch.Tensor, attention_mask: torch.Tensor, answer: slice,
                   features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of log p(answer token | everything before it), one value per row of `features`."""
    rows = features.shape[0]
    embeds = adapter.embed_with_visual_tokens(input_ids.expand(rows, -1), features)
    logits = adapter.model(inputs_embeds=embeds, attention_mask=attention_mask.expand(rows, -1)).logits
    logp = logits[:, answer.start - 1: answer.stop - 1].float().log_softmax(-1)
    targets = input_ids[0, answer].expand(rows, -1).unsqueeze(-1)
    return (logp.gather(-1, targets).squeeze(-1) * weights.to(logp.device)).sum(-1)


def integrated_gradients(vlm, dataset: Dataset, samples: list[ObjectSample], spec: TaskSpec,
                         n_steps: int = 32) -> dict[int, np.ndarray]:
    """Per-sample token scores (|IG attribution|, one per image token), memoized on the VLM."""
    from captum.attr import IntegratedGradients

    adapter = vlm.adapter
    device = next(adapter.model.parameters()).device

    def compute(sample: ObjectSample) -> np.ndarray:
        mean = vlm.mean_visual_embedding()
        question, answer = spec.question(sample, dataset.categories), spec.correct_answer(adapter, sample)
        inputs, span = adapter.encode_with_answer(dataset.image(sample), question, answer)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with torch.no_grad():
            features = adapter.visual_tokens(inputs)[0]
        weights = spec.scored_tokens(adapter, inputs["input_ids"][0, span]).float()

        def target(feats: torch.Tensor) -> torch.Tensor:
            return answer_logprob(adapter, inputs["input_ids"], inputs["attention_mask"], span, feats, weights)

        attributions = IntegratedGradients(target).attribute(
            features[None], baselines=mean.to(features.dtype)[None, None].expand_as(features[None]),
            n_steps=n_steps, internal_batch_size=n_steps)
        return attributions[0].float().sum(-1).abs().detach().cpu().numpy()

    return {s.annotation_id: vlm.memo(("integrated-gradients", dataset.fingerprint, spec.name, n_steps,
                                       vlm.reference_images, s.annotation_id), lambda s=s: compute(s))
            for s in samples}

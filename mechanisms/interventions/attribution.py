"""Integrated Gradients over the visual tokens at the LM input (§3.1 iii), computed with captum.

The attributed function is the teacher-forced log-probability of the correct answer given the image
tokens: for localization, the coordinate tokens of the ground-truth box answer (every answer token
holding a digit; brackets and commas are template and carry no choice); for classification, the tokens
of the correct class name as the answer to the list prompt. The IG baseline is the mean visual
embedding, the same "no information" point ablation uses. A token's score is the magnitude of its
attribution summed over the hidden dimension (by IG's completeness, that sum is the token's share
of the change in the target from baseline to input).
"""

from __future__ import annotations

import numpy as np
import torch

from mechanisms.data.dataset import Dataset, ObjectSample
from mechanisms.prompts import box_prompt, list_prompt

TASKS = ("localization", "classification")


def answer_target(vlm, dataset: Dataset, sample: ObjectSample, task: str) -> tuple[str, str]:
    """(question, correct answer) whose answer tokens IG attributes."""
    if task == "localization":
        return box_prompt(sample.category), vlm.adapter.format_box(sample.box, sample.width, sample.height)
    if task == "classification":
        return list_prompt(dataset.categories), sample.category
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def coordinate_weights(tokenizer, answer_ids: torch.Tensor, task: str) -> torch.Tensor:
    """Which answer tokens count: digit-bearing tokens for boxes, every token of a class name."""
    if task == "classification":
        return torch.ones(len(answer_ids))
    texts = [tokenizer.decode([int(t)]) for t in answer_ids]
    return torch.tensor([float(any(ch.isdigit() for ch in text)) for text in texts])


def answer_logprob(adapter, input_ids: torch.Tensor, attention_mask: torch.Tensor, answer: slice,
                   features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of log p(answer token | everything before it), one value per row of `features`."""
    rows = features.shape[0]
    embeds = adapter.embed_with_visual_tokens(input_ids.expand(rows, -1), features)
    logits = adapter.model(inputs_embeds=embeds, attention_mask=attention_mask.expand(rows, -1)).logits
    logp = logits[:, answer.start - 1: answer.stop - 1].float().log_softmax(-1)
    targets = input_ids[0, answer].expand(rows, -1).unsqueeze(-1)
    return (logp.gather(-1, targets).squeeze(-1) * weights.to(logp.device)).sum(-1)


def integrated_gradients(vlm, dataset: Dataset, samples: list[ObjectSample], task: str,
                         n_steps: int = 32) -> dict[int, np.ndarray]:
    """Per-sample token scores (|IG attribution|, one per image token), memoized on the VLM."""
    from captum.attr import IntegratedGradients

    adapter = vlm.adapter
    device = next(adapter.model.parameters()).device

    def compute(sample: ObjectSample) -> np.ndarray:
        mean = vlm.mean_visual_embedding()
        question, answer = answer_target(vlm, dataset, sample, task)
        inputs, span = adapter.encode_with_answer(dataset.image(sample), question, answer)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with torch.no_grad():
            features = adapter.visual_tokens(inputs)[0]
        weights = coordinate_weights(adapter.tokenizer, inputs["input_ids"][0, span], task)

        def target(feats: torch.Tensor) -> torch.Tensor:
            return answer_logprob(adapter, inputs["input_ids"], inputs["attention_mask"], span, feats, weights)

        attributions = IntegratedGradients(target).attribute(
            features[None], baselines=mean.to(features.dtype)[None, None].expand_as(features[None]),
            n_steps=n_steps, internal_batch_size=n_steps)
        return attributions[0].float().sum(-1).abs().detach().cpu().numpy()

    return {s.annotation_id: vlm.memo(("integrated-gradients", dataset.fingerprint, task, n_steps,
                                       vlm.reference_images, s.annotation_id), lambda s=s: compute(s))
            for s in samples}

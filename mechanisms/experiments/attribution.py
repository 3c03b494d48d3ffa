"""Integrated Gradients over the visual tokens at the LM input (§3.1 iii), computed with captum.

The attributed function is the teacher-forced log-probability of the spec's correct answer given the
image tokens, summed over the tokens the spec scores (the same rule as mediation's perplexity,
`TaskSpec.scored_tokens`): for localization (`BOX`), the choice-carrying digits of the ground-truth box
answer (brackets, commas and LLaVA's leading "0." are template); for classification (`LIST`), "the
correct class logits" read inside a list answer: the image's classes are teacher-forced in category
order up to this object's class, and only that class name's tokens are attributed. The IG baseline is the mean visual
embedding, the same "no information" point ablation uses. A token's score is the magnitude of its
attribution summed over the hidden dimension (by IG's completeness, that sum is the token's share
of the change in the target from baseline to input).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from mechanisms.data.dataset import Dataset, ObjectSample
from mechanisms.storage import storable
from mechanisms.tasks.specs import TaskSpec


def answer_logprob(adapter, inputs: dict, answer: slice, features: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of log p(answer token | everything before it), one value per element of `features`.

    Logits are computed only where an answer token is predicted (`logits_to_keep`: the answer ends the
    sequence), not over the ~600-1,800 image tokens: at a 152k vocabulary that is the difference between
    kilobytes and gigabytes per interpolation step."""
    n = features.shape[0]
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    if answer.stop != input_ids.shape[1]:
        raise ValueError("the teacher-forced answer must end the sequence")
    kept = answer.stop - answer.start + 1  # positions answer.start - 1 ... the end
    # the model scatters the visual tokens itself (gradients flow through it), one prompt row per step
    logits = adapter.model(input_ids=input_ids.expand(n, -1), attention_mask=attention_mask.expand(n, -1),
                           **adapter.visual_inputs(list(features)), **adapter.layout_inputs(inputs, rows=n),
                           logits_to_keep=kept).logits
    logp = logits[:, :-1].float().log_softmax(-1)
    targets = input_ids[0, answer].expand(n, -1).unsqueeze(-1)
    return (logp.gather(-1, targets).squeeze(-1) * weights.to(logp.device)).sum(-1)


@storable
@dataclass
class TokenAttribution:
    """One sample's IG: signed attribution per image token (summed over the hidden dimension), and the
    attributed function at the input and at the baseline (completeness: the attributions sum to their
    difference, up to the integration error)."""

    per_token: np.ndarray
    at_input: float
    at_baseline: float

    @property
    def magnitude(self) -> np.ndarray:
        """|attribution| per token: the score the top-k ablations rank by."""
        return np.abs(self.per_token)

    @property
    def completeness_error(self) -> float:
        """|sum of attributions - (f(input) - f(baseline))| / |f(input) - f(baseline)|: the quadrature's error."""
        change = self.at_input - self.at_baseline
        return abs(float(self.per_token.sum()) - change) / max(abs(change), 1e-12)


def attributions(vlm, dataset: Dataset, samples: list[ObjectSample], spec: TaskSpec, n_steps: int = 32,
                 steps_per_pass: int | None = None) -> dict[int, TokenAttribution]:
    """Each sample's `TokenAttribution` (signed, with the target at both ends), memoized on the VLM."""
    target = f"{spec.name}:class-in-list" if spec.per_image else spec.name  # keys what is attributed
    return {s.annotation_id: vlm.memo(("integrated-gradients", dataset.fingerprint, target, n_steps,
                                       vlm.reference_images, s.annotation_id),
                                      lambda s=s: token_attributions(vlm, dataset, s, spec, n_steps, steps_per_pass))
            for s in samples}


def integrated_gradients(vlm, dataset: Dataset, samples: list[ObjectSample], spec: TaskSpec,
                         n_steps: int = 32, steps_per_pass: int | None = None) -> dict[int, np.ndarray]:
    """Per-sample token scores: |IG attribution|, one per image token (what the top-k ablations rank)."""
    found = attributions(vlm, dataset, samples, spec, n_steps, steps_per_pass)
    return {i: a.magnitude for i, a in found.items()}


def completeness_summary(found: dict[int, TokenAttribution]) -> dict:
    """How exactly the quadrature integrated, over samples: the relative completeness error's median, 90th
    percentile and maximum (`benchmarks/ig_steps.py` measures what a step count buys)."""
    errors = np.asarray([a.completeness_error for a in found.values()])
    if errors.size == 0:
        return {"samples": 0}
    return {"samples": int(errors.size), "median": round(float(np.median(errors)), 4),
            "p90": round(float(np.quantile(errors, 0.9)), 4), "max": round(float(errors.max()), 4)}


def token_attributions(vlm, dataset: Dataset, sample: ObjectSample, spec: TaskSpec, n_steps: int = 32,
                       steps_per_pass: int | None = None) -> TokenAttribution:
    """IG of the spec's correct-answer log-probability over the sample's image tokens (module docstring).

    Memory is bounded: the interpolation steps run in chunks of the device's budget (captum's
    `internal_batch_size`), with no gradients for the parameters (only for the visual tokens), the model
    in eval mode, and logits only at the answer's positions."""
    from captum.attr import IntegratedGradients

    adapter = vlm.adapter
    device = next(adapter.model.parameters()).device
    mean = vlm.mean_visual_embedding()
    image, question = dataset.image(sample), spec.question(sample, dataset.categories)
    inputs, span, scored = _teacher_forced(adapter, dataset, sample, spec, image, question)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    with torch.no_grad():
        features = adapter.visual_tokens(inputs)[0]
    weights = scored.float()
    baseline = mean.to(features.dtype)[None, None].expand_as(features[None])

    def target(feats: torch.Tensor) -> torch.Tensor:
        return answer_logprob(adapter, inputs, span, feats, weights)

    with _no_parameter_gradients(adapter.model):
        found = IntegratedGradients(target).attribute(
            features[None], baselines=baseline, n_steps=n_steps,
            internal_batch_size=steps_per_pass or steps_that_fit(adapter, inputs["input_ids"].shape[1], n_steps))
        with torch.no_grad():
            ends = target(torch.cat([features[None], baseline]))
    return TokenAttribution(found[0].float().sum(-1).detach().cpu().numpy(), float(ends[0]), float(ends[1]))


def ig_step_bytes(hidden: int, intermediate: int, layers: int, tokens: int, item: int) -> int:
    """Activations one interpolation step keeps for its backward pass: per token and decoder layer about
    11 hidden-wide tensors (norm outputs, q/k/v, attention output, residuals) and 4 MLP-wide ones (gate, up,
    activation, product); memory-efficient attention keeps no score matrix. Measured on the CPU
    (benchmarks/ig_memory.py, hidden 256, MLP 512): 19.1 values per (token, layer, hidden unit); this
    formula gives 19.0."""
    return (11 * hidden + 4 * intermediate) * tokens * layers * item


def steps_that_fit(adapter, n_tokens: int, n_steps: int) -> int:
    """Interpolation steps per forward/backward pass within the device's memory budget
    (`prefix.memory_budget`, `ig_step_bytes` each)."""
    from mechanisms.experiments.prefix import memory_budget

    text = adapter.model.config.text_config
    item = torch.finfo(adapter.model.dtype).bits // 8
    per_step = ig_step_bytes(text.hidden_size, getattr(text, "intermediate_size", 4 * text.hidden_size),
                             text.num_hidden_layers, n_tokens, item)
    budget = memory_budget(next(adapter.model.parameters()).device)
    return max(1, min(n_steps, int(budget // per_step)))


def _teacher_forced(adapter, dataset: Dataset, sample: ObjectSample, spec: TaskSpec, image, question):
    """(inputs, answer span, which answer tokens are attributed). The list prompt's answer is the image's
    classes up to this object's (`TaskSpec.list_answer`) and only the class's own tokens are attributed;
    every other spec teacher-forces its correct answer and scores `spec.scored_tokens`."""
    if not spec.per_image:
        inputs, span = adapter.encode_with_answer(image, question, spec.correct_answer(adapter, sample))
        return inputs, span, spec.scored_tokens(adapter, inputs["input_ids"][0, span])
    before, through = spec.list_answer(sample, dataset.classes_in_image(sample.image_id))
    inputs, span = adapter.encode_with_answer(image, question, through)
    n_before = 0
    if before:
        prefix, prefix_span = adapter.encode_with_answer(image, question, before)
        n_before = prefix_span.stop - prefix_span.start
        if not torch.equal(prefix["input_ids"][0, prefix_span], inputs["input_ids"][0, span][:n_before]):
            raise ValueError(f"the list answer {through!r} does not tokenize with {before!r} as its prefix")
    scored = torch.zeros(span.stop - span.start, dtype=torch.bool)
    scored[n_before:] = True
    return inputs, span, scored


@contextlib.contextmanager
def _no_parameter_gradients(model: torch.nn.Module):
    """Gradients flow to the inputs only: parameters stop requiring them for the block (and are restored)."""
    previous = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p, _ in previous:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in previous:
            p.requires_grad_(flag)
        model.train(was_training)

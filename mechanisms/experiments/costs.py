"""What a paper-scale run costs, per experiment, before it starts: FLOPs, peak GPU memory, disk, GPU time.

Counts come from three places, never from a run:
- the model's real configuration, built on the meta device (`models.paper_configs`): parameter counts,
  widths, heads, vocabulary;
- the profile's settings, the keys the claims read (objects, conditions, seeds, pairs, layer groups, IG
  steps, probe images and stored tokens), at the paper's sizes (2,248 objects; 50,000 / 10,000 probe images);
- the code's own batching: generation batches of `profile.batch_size`; circuit sweeps on one shared prefix
  with rows branching in at their layer and rows per forward from `prefix.rows_that_fit`; IG steps per
  pass from `attribution.steps_that_fit`; probes storing `train_tokens_per_image` tokens per stage.

FLOPs count matmuls (2 per multiply-add): per LM token 2 x (decoder parameters) plus attention
4 x layers x heads x head_dim x (keys seen); logits only where the code computes them; the vision tower per
view likewise. A backward pass with input gradients only costs about one forward more (no weight
gradients). GPU time: forward work at `mfu` of the device's dense bf16 peak; each decoding step takes at
least one read of the weights and the batch's KV cache at `bandwidth_use` of its memory bandwidth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

BF16 = 2
PAPER_OBJECTS = 2248  # the paper's filtered COCO subset
PROBE_TRAIN, PROBE_TEST = 50_000, 10_000  # §3.2
ANSWER_TOKENS = {"box": 26, "list": 12, "binary": 2}  # typical generated lengths incl. the end token


@dataclass(frozen=True)
class Device:
    name: str
    memory_bytes: float
    bf16_flops: float  # dense peak
    bandwidth: float  # bytes / s
    mfu: float = 0.4
    bandwidth_use: float = 0.6


H200 = Device("NVIDIA H200 (141 GB, 989 TFLOP/s bf16 dense, 4.8 TB/s)", 141e9, 989e12, 4.8e12)


@dataclass(frozen=True)
class Shape:
    """What the cost of a forward pass depends on, read off a model (meta or real) and its image geometry."""

    lm_params: int  # decoder layers + final norm: the matmuls every LM token pays
    head_params: int  # lm_head (hidden x vocabulary): paid per position whose logits are computed
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocabulary: int
    vision_params: int
    vision_layers: int
    vision_hidden: int
    vision_tokens: int  # tokens per view inside the vision tower (patches + CLS)
    views: int  # views per image (LLaVA 1; InternVL tiles + thumbnail)
    image_tokens: int  # LM image tokens per image, all views
    text_tokens: int  # prompt text around the image (system, template, question)
    weight_bytes: int

    @property
    def prompt_tokens(self) -> int:
        return self.image_tokens + self.text_tokens

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * BF16

    @property
    def state_bytes_per_token(self) -> int:
        """Every probe stage's state of one token in fp16 plus its labels (`probing.extract`)."""
        stages = [self.vision_hidden] * (self.vision_layers + 1) + [self.hidden] * (self.layers + 1)
        return sum(2 * d + 8 for d in stages)


def shape_of(model, image_tokens: int, views: int, vision_tokens: int, text_tokens: int) -> Shape:
    """A Shape from any LLaVA / InternVL model instance (meta device or loaded)."""
    inner = model.model
    text = model.config.text_config
    vision = model.config.vision_config
    lm = inner.language_model
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    heads = text.num_attention_heads
    return Shape(
        lm_params=count(lm) - lm.embed_tokens.weight.numel(), head_params=model.lm_head.weight.numel(),
        layers=text.num_hidden_layers, hidden=text.hidden_size, heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        intermediate=text.intermediate_size, vocabulary=text.vocab_size,
        vision_params=count(inner.vision_tower) + count(inner.multi_modal_projector),
        vision_layers=vision.num_hidden_layers, vision_hidden=vision.hidden_size, vision_tokens=vision_tokens,
        views=views, image_tokens=image_tokens, text_tokens=text_tokens,
        weight_bytes=sum(p.numel() for p in model.parameters()) * BF16)


def paper_shape(profile: str, width: int = 640, height: int = 480) -> Shape:
    """A paper profile's Shape for a typical COCO image (640 x 480: InternVL cuts 3 x 2 tiles + thumbnail)."""
    from mechanisms.models.paper_configs import meta_model

    model = meta_model(profile)
    vision = model.config.vision_config
    if profile == "internvl8b":
        from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

        from mechanisms.models.adapters.internvl import PAPER_MAX_TILES

        cols, rows = get_optimal_tiled_canvas((height, width), (448, 448), 1, PAPER_MAX_TILES)
        views = cols * rows + (1 if cols * rows > 1 else 0)
        patches = (vision.image_size[0] // vision.patch_size[0]) ** 2
        per_view = int(patches * model.config.downsample_ratio ** 2)
        return shape_of(model, views * per_view, views, patches + 1, text_tokens=60)
    patches = (vision.image_size // vision.patch_size) ** 2
    return shape_of(model, patches, 1, patches + 1, text_tokens=70)


# ----- FLOPs of the code's passes -------------------------------------------------------------------------
def lm_flops(shape: Shape, queries: int, keys_before: int = 0) -> float:
    """`queries` new tokens through the LM, each seeing `keys_before` earlier keys plus the causal part."""
    attention = 4 * shape.layers * shape.heads * shape.head_dim * (queries * keys_before
                                                                   + queries * (queries + 1) / 2)
    return queries * 2 * shape.lm_params + attention


def logits_flops(shape: Shape, positions: int) -> float:
    return positions * 2 * shape.head_params


def vision_flops(shape: Shape) -> float:
    """One image's views through the vision tower and projector."""
    per_view = (2 * shape.vision_params * shape.vision_tokens
                + 4 * shape.vision_layers * shape.vision_hidden * shape.vision_tokens ** 2)
    return shape.views * per_view


def mediation_pair_flops(shape: Shape, suffix: int) -> float:
    """One (source, base) pair over every head (`mediation.mediate_pair`): the source's full pass, the base
    prefix and suffix, and each head's row from its own layer on (layers l..L-1: (L + 1) / 2 on average)."""
    heads = shape.layers * shape.heads
    prefix = shape.prompt_tokens
    return (2 * vision_flops(shape) + lm_flops(shape, prefix + suffix) + lm_flops(shape, prefix)
            + lm_flops(shape, suffix, prefix) * (1 + heads * (shape.layers + 1) / 2 / shape.layers)
            + (heads + 2) * logits_flops(shape, suffix))


def naive_mediation_pair_flops(shape: Shape, suffix: int) -> float:
    """The same pair with one full pass (pixels in) per head, plus the source and base passes."""
    heads = shape.layers * shape.heads
    return (heads + 2) * (vision_flops(shape) + lm_flops(shape, shape.prompt_tokens + suffix)
                          + logits_flops(shape, suffix))


def knockout_object_flops(shape: Shape, layer_sets: list[set[int]], question: int, answer: int) -> float:
    """One object's knockout sweep (`knockout_sweep`): the prefix once, the question for the baseline row and
    each group's row from its first knocked-out layer, then every row decoding `answer` tokens."""
    rows = len(layer_sets) + 1
    before = shape.prompt_tokens - question
    layer_rows = shape.layers + sum(shape.layers - min(g) for g in layer_sets)
    return (vision_flops(shape) + lm_flops(shape, before) + layer_rows / shape.layers * lm_flops(shape, question, before)
            + rows * sum(lm_flops(shape, 1, shape.prompt_tokens + i) + logits_flops(shape, 1) for i in range(answer)))


def ig_sample_flops(shape: Shape, steps: int, answer: int) -> float:
    """IG for one object: `steps` forward + input-gradient backward passes (~2 forwards) over prompt + answer."""
    t = shape.prompt_tokens + answer
    return vision_flops(shape) + steps * 2 * (lm_flops(shape, t) + logits_flops(shape, answer + 1))


@dataclass
class Work:
    """One experiment's work: compute-bound FLOPs, decoding steps (memory-bound), memory and disk."""

    name: str
    claims: str
    flops: float = 0.0  # forward/backward work outside decoding steps
    decode_flops: float = 0.0
    decode_steps: float = 0.0  # batched decoding steps (each reads the weights once)
    decode_bytes_per_step: float = 0.0  # KV cache read per step, beyond the weights
    peak_bytes: float = 0.0  # GPU memory at the experiment's widest pass, weights included
    disk_bytes: float = 0.0
    notes: list[str] = field(default_factory=list)

    def seconds(self, shape: Shape, device: Device) -> float:
        compute = (self.flops + self.decode_flops) / (device.mfu * device.bf16_flops)
        reads = self.decode_steps * (shape.weight_bytes + self.decode_bytes_per_step) / (
            device.bandwidth_use * device.bandwidth)
        return max(compute, reads + self.flops / (device.mfu * device.bf16_flops))


def generation(shape: Shape, work: Work, answers: float, task: str, batch: int) -> None:
    """`answers` greedy answers on a task (prefill the prompt, decode its typical answer length) in
    batches of `batch`; vision once per answer (an upper bound: conditions share an image's tokens)."""
    a, t = ANSWER_TOKENS[task], shape.prompt_tokens
    work.flops += answers * (lm_flops(shape, t) + logits_flops(shape, 1) + vision_flops(shape))
    work.decode_flops += answers * sum(lm_flops(shape, 1, t + i) + logits_flops(shape, 1) for i in range(a - 1))
    batches = math.ceil(answers / batch)
    work.decode_steps += batches * (a - 1)
    work.decode_bytes_per_step = max(work.decode_bytes_per_step, batch * (t + a) * shape.kv_bytes_per_token)
    activations = batch * t * (4 * shape.hidden + 3 * shape.intermediate) * BF16
    work.peak_bytes = max(work.peak_bytes, shape.weight_bytes + batch * (t + a) * shape.kv_bytes_per_token
                          + activations + batch * shape.vocabulary * 4)


def _settings_objects(value, n: int) -> int:
    return n if value in ("all", None) else min(int(value), n)


def paper_scale_work(profile, shape: Shape, device: Device = H200, objects: int = PAPER_OBJECTS,
                     probe_train: int = PROBE_TRAIN, probe_test: int = PROBE_TEST) -> list[Work]:
    """Every experiment of a `pytest claims -m <profile>` run at the paper's sizes."""
    from mechanisms.experiments.attribution import ig_step_bytes
    from mechanisms.experiments.knockout_sweep import consecutive_groups, layer_groups
    from mechanisms.experiments.prefix import suffix_row_bytes

    claims, batch = profile.claims, profile.batch_size
    interventions = _settings_objects(claims["interventions"]["max_objects"], objects)
    seeds = claims["interventions"]["random_seeds"]
    free = device.memory_bytes - shape.weight_bytes
    works = []

    def new(name, claims_text):
        works.append(Work(name, claims_text))
        return works[-1]

    w = new("baseline answers", "baseline, hallucination")
    generation(shape, w, objects, "box", batch)
    generation(shape, w, objects, "list", batch)
    generation(shape, w, objects, "binary", batch)
    generation(shape, w, objects, "list", batch)

    w = new("token ablations", "object tokens, padding, registers, shuffling, containerization"
            + (", views" if shape.views > 1 else ""))
    conditions = (1 + seeds) + 5 + 2 * claims["shuffling"]["seeds"]  # object + random, paddings + register, shuffles
    if shape.views > 1:
        conditions += 3 * len(claims["views"]["paddings"])
    for task in ("box", "list"):
        generation(shape, w, interventions * conditions, task, batch)
    container = claims["containerization"]
    generation(shape, w, interventions * len(container["rings"]) * container["seeds"], "box", batch)

    ig = claims["integrated_gradients"]
    w = new("integrated gradients", "gradient-selected tokens")
    t = shape.prompt_tokens + ANSWER_TOKENS["box"]
    per_step = ig_step_bytes(shape.hidden, shape.intermediate, shape.layers, t, BF16)
    steps_per_pass = max(1, min(ig["steps"], int(free / 4 // per_step)))
    w.flops += 2 * interventions * ig_sample_flops(shape, ig["steps"], ANSWER_TOKENS["box"])
    w.peak_bytes = shape.weight_bytes + steps_per_pass * per_step
    w.notes.append(f"{steps_per_pass} of {ig['steps']} steps per pass, {per_step / 1e9:.1f} GB each "
                   "((11 x hidden + 4 x MLP width) x tokens x layers x 2 bytes)")
    for task in ("box", "list"):
        generation(shape, w, interventions * (len(ig["k"]) + 1 + len(ig["random_k"]) * seeds), task, batch)

    knock = claims["knockout"]
    n_knock = _settings_objects(knock["max_objects"], objects)
    groups = layer_groups(shape.layers, knock["group_sizes"])
    w = new("attention knockout", "knockout (Figures 3, 12)")
    question = shape.text_tokens // 2  # the prompt after the image (question, template)
    first_size = consecutive_groups(shape.layers, knock["group_sizes"][0])  # the series Figure 12 pads
    sweeps = [("box", list(groups.values())), ("list", list(groups.values())), ("box", list(first_size.values()))]
    for task, sets in sweeps:  # each task over every group; Figure 12's padded object over the first size
        a, rows = ANSWER_TOKENS[task], len(sets) + 1
        w.flops += n_knock * knockout_object_flops(shape, sets, question, 0)
        w.decode_flops += n_knock * (knockout_object_flops(shape, sets, question, a - 1)
                                     - knockout_object_flops(shape, sets, question, 0))
        w.decode_steps += n_knock * (a - 1)
        w.decode_bytes_per_step = max(w.decode_bytes_per_step, shape.prompt_tokens * shape.kv_bytes_per_token
                                      + rows * (question + a) * shape.kv_bytes_per_token)
    rows = len(groups) + 1
    w.peak_bytes = shape.weight_bytes + shape.prompt_tokens * shape.kv_bytes_per_token + rows * (
        question + ANSWER_TOKENS["box"]) * (4 * shape.hidden + 3 * shape.intermediate) * BF16
    w.notes.append(f"{n_knock} objects x {rows} rows (every group and the baseline) on one shared prefix each")

    med = claims["mediation"]
    w = new("head mediation", "head mediation (Figures 4, 13, 14), cumulative head ablation ranking")
    heads = shape.layers * shape.heads
    suffix = question + ANSWER_TOKENS["box"]
    row_bytes = suffix_row_bytes(shape.heads, shape.hidden, shape.intermediate, BF16, suffix, shape.prompt_tokens + suffix)
    per_forward = max(1, min(heads, int(free / 4 // row_bytes)))
    layers_per_row = (shape.layers + 1) / 2
    per_pair = mediation_pair_flops(shape, suffix)
    w.flops += 2 * med["pairs"] * per_pair
    w.peak_bytes = shape.weight_bytes + shape.prompt_tokens * shape.kv_bytes_per_token + per_forward * row_bytes
    naive = naive_mediation_pair_flops(shape, suffix)
    w.notes.append(f"{heads} heads, {per_forward} rows per forward, a row runs {layers_per_row:.1f} layers on average; "
                   f"one full pass per head would be {naive / per_pair:.0f}x these FLOPs")

    abl = claims["head_ablation"]
    n_abl = _settings_objects(abl["max_objects"], objects)
    w = new("cumulative head ablation", "cumulative head ablation (Figure 5)")
    generation(shape, w, n_abl * len(abl["fractions"]) * 4, "box", batch)

    probing = claims["probing"]
    w = new("positional probes", "positional decoding (Figures 2, 11)")
    w.flops += (probe_train + probe_test) * (lm_flops(shape, shape.image_tokens + 10) + vision_flops(shape))
    tokens = probing["train_tokens_per_image"]
    stored = tokens if tokens else shape.image_tokens
    w.disk_bytes = probe_train * stored * shape.state_bytes_per_token
    chunk = probing["chunk_images"]
    w.peak_bytes = shape.weight_bytes + chunk * (shape.image_tokens + 10) * shape.hidden * (shape.layers + 1) * BF16
    w.notes.append(f"{'all' if not tokens else tokens} training tokens stored per image and stage "
                   f"({shape.state_bytes_per_token / 1e3:.0f} kB per token, every stage); test images streamed; "
                   f"probe training ({probing['epochs']} epochs over the stored tokens) not counted")
    return works

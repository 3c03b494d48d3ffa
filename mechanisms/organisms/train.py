"""Train tiny-llava from a seed: `python -m mechanisms.organisms.train --out fixtures/models/tiny-llava`.

Recipe (written into the model card too), following LLaVA-1.5's split into a frozen vision encoder and a
trained projector + LM:

1. *Vision pre-training* with a **global** objective only: multi-label classification of which
   categories are in the scene, from the mean of the tower's patch tokens. Nothing tells a patch what
   it shows or where it is (that would build the claims' answers into the features); the tower's
   position table is a fixed 2-D sine-cosine table, as position-aware initialisation.
2. *Instruction tuning*: the tower frozen, projector + LM trained on multi-turn chats in LLaVA-1.5's
   format, every turn one of the paper's three prompts (box, list, binary yes/no with present and
   absent classes), loss on the answers only.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration

from mechanisms.data.synthetic import (
    CATEGORY_NAMES,
    DEFAULT_COOCCURRENCE,
    SceneConfig,
    SceneSpec,
    generate_scenes,
    render_mask,
    render_scene,
)
from mechanisms.geometry import Box, mask_bbox
from mechanisms.models.adapters.base import ModelAdapter
from mechanisms.models.adapters.llava import LlavaAdapter
from mechanisms.models.registry import native_bf16
from mechanisms.organisms import tiny_llava
from mechanisms.storage import atomic_write_json, atomic_write_text
from mechanisms.tasks.prompts import binary_prompt, box_prompt, list_prompt
from mechanisms.tasks.scoring import LocalizationResult, score_boxes

TRAIN_SCENE_SEED_OFFSET = 1_000_003  # training scenes never share a seed with evaluation sets


def _pixels_for(specs: list[SceneSpec], recipe: str = tiny_llava.TRAINING) -> np.ndarray:
    processor = tiny_llava.build_processor(recipe=recipe)
    images = [render_scene(spec) for spec in specs]
    out = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    return out.to(torch.float16).numpy()


def render_pixels(scenes: list[SceneSpec], workers: int = 2, chunk: int = 256,
                  recipe: str = tiny_llava.TRAINING) -> torch.Tensor:
    chunks = [scenes[i:i + chunk] for i in range(0, len(scenes), chunk)]
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(_pixels_for, chunks, [recipe] * len(chunks)))
    return torch.from_numpy(np.concatenate(parts))


class ChatBuilder:
    """Token ids and loss labels for multi-turn chats about one scene."""

    def __init__(self, adapter: ModelAdapter, max_turns: int, rng: random.Random,
                 follow_up: str = tiny_llava.FOLLOW_UP_TURN, reply: str = tiny_llava.REPLY):
        self.adapter = adapter
        self.tok = adapter.tokenizer
        self.rng = rng
        self.max_turns = max_turns
        self.follow_up = follow_up  # the chat format of turns after the first: "{question}" is filled in
        self.reply = reply  # an answer and the end-of-turn token the model must learn to emit
        self.image_id = adapter.model.config.image_token_id
        self.partners: dict[str, list[str]] = {}
        for a, b in DEFAULT_COOCCURRENCE:
            self.partners.setdefault(a, []).append(b)
            self.partners.setdefault(b, []).append(a)
        self._cache: dict[tuple[str, bool], list[int]] = {}

    def _ids(self, text: str, special: bool = False) -> list[int]:
        """Token ids of `text`; `special` adds what the tokenizer puts around a whole prompt (e.g. BOS)."""
        if (text, special) not in self._cache:
            self._cache[text, special] = self.tok(text, add_special_tokens=special).input_ids
        return self._cache[text, special]

    def turns(self, scene: SceneSpec) -> list[tuple[str, str]]:
        present = [obj.name for obj in scene.objects]
        turns = []
        for obj in scene.objects:
            box = mask_bbox(render_mask(obj, scene.width, scene.height))
            turns.append((box_prompt(obj.name), self.adapter.format_box(box, scene.width, scene.height)))
        listed = [name for name in CATEGORY_NAMES if name in present]
        turns.append((list_prompt(CATEGORY_NAMES), ", ".join(listed)))
        turns.append((binary_prompt(self.rng.choice(present)), "Yes"))
        absent = [n for n in CATEGORY_NAMES if n not in present]
        hard = [p for n in present for p in self.partners.get(n, []) if p not in present]
        negative = self.rng.choice(hard) if hard and self.rng.random() < 0.5 else self.rng.choice(absent)
        turns.append((binary_prompt(negative), "No"))
        self.rng.shuffle(turns)
        return turns[: self.max_turns]

    def encode(self, scene: SceneSpec) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        for index, (question, answer) in enumerate(self.turns(scene)):
            if index == 0:  # the chat template's prompt, its image placeholder expanded as the processor does
                prompt = self._ids(self.adapter.chat_text(question), special=True)
                at = prompt.index(self.image_id)
                prompt = prompt[:at] + self.adapter.image_token_ids(scene.width, scene.height) + prompt[at + 1:]
            else:
                prompt = self._ids(self.follow_up.format(question=question))
            reply = self._ids(self.reply.format(answer=answer))
            ids += prompt + reply
            labels += [-100] * len(prompt) + reply
        return ids, labels


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int):
    length = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), length), dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention[row, : len(ids)] = 1
    return input_ids, labels, attention


def pretrain_vision(model, pixels: torch.Tensor, scenes: list[SceneSpec], steps: int, batch: int,
                    lr: float, seed: int, log, pooling: str = "max") -> None:
    """tiny-llava's tower: which categories are in the scene, pooled over its patch tokens as the recipe says."""
    tower = model.model.vision_tower
    targets = torch.zeros(len(scenes), len(CATEGORY_NAMES))
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            targets[i, obj.category_id - 1] = 1
    pretrain_tower(tower, tower.embeddings.position_embedding.weight, pixels, targets, steps, batch, lr, seed, log,
                   pooling=pooling)


def pretrain_tower(tower, position_table: torch.nn.Parameter, pixels: torch.Tensor, targets: torch.Tensor,
                   steps: int, batch: int, lr: float, seed: int, log, pooling: str = "mean") -> None:
    """Multi-label classification of `targets` [n, categories] from each image's patch tokens (CLS dropped):
    a global objective only, image-level labels. `pooling` "mean": a linear head on the mean token (every
    token is pushed to carry the whole scene); "max": the head scores every token and each category takes
    its best token (multiple-instance pooling: nothing rewards spreading a class beyond where it is seen).
    The position table stays fixed; the tower ends frozen."""
    position_table.requires_grad_(False)
    head = torch.nn.Linear(tower.config.hidden_size, targets.shape[1]).to(pixels.device)
    params = [p for p in tower.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    tower.train()
    for step in range(steps):
        idx = torch.randint(0, len(pixels), (batch,), generator=gen)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        with mixed_precision(pixels.device.type):
            hidden = tower(pixel_values=pixels[idx.to(pixels.device)].float()).last_hidden_state[:, 1:]
            logits = head(hidden.mean(1)) if pooling == "mean" else head(hidden).amax(1)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets[idx].to(logits.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            acc = ((logits.float() > 0) == targets[idx].to(logits.device).bool()).float().mean().item()
            log({"stage": "vision", "step": step, "loss": round(loss.item(), 4), "label_acc": round(acc, 4)})
    tower.eval()
    tower.requires_grad_(False)


def heldout_scenes(seed: int, n: int = 64) -> list[SceneSpec]:
    """The learning curve's evaluation scenes: a seed no training scene uses (`TRAIN_SCENE_SEED_OFFSET`)."""
    return generate_scenes(n, seed + 2 * TRAIN_SCENE_SEED_OFFSET, SceneConfig())


@torch.no_grad()
def heldout_boxes(adapter: ModelAdapter, scenes: list[SceneSpec],
                  max_objects: int = 96) -> tuple[LocalizationResult, list[Box], list[tuple[int, int]]]:
    """Greedy box answers on held-out scenes (scenes in order, stopping once `max_objects` is reached at a
    scene's end), scored by the claims' own rule (`score_boxes`), with each object's truth and image size."""
    from mechanisms.tasks.generation import Generator
    from mechanisms.tasks.specs import BOX

    generator = Generator(adapter, batch_size=32)
    images, questions, truths, sizes = [], [], [], []
    for scene in scenes:
        image = render_scene(scene)
        for obj in scene.objects:
            images.append(image)
            questions.append(box_prompt(obj.name))
            truths.append(mask_bbox(render_mask(obj, scene.width, scene.height)))
            sizes.append((scene.width, scene.height))
        if len(questions) >= max_objects:
            break
    answers = generator.generate(images, questions, max_new_tokens=BOX.max_new_tokens)
    return score_boxes(adapter, answers, truths, sizes), truths, sizes


def quick_eval(adapter: ModelAdapter, scenes: list[SceneSpec], max_objects: int = 96) -> dict:
    """The paper's localization score on held-out scenes' greedy box answers, for the learning curve."""
    result, _, _ = heldout_boxes(adapter, scenes, max_objects)
    return {"loc": result.score, "acc50": float(result.success(0.5).mean()), "mean_iou": float(result.ious.mean()),
            "n": len(result.ious)}


def mixed_precision(device_type: str):
    """bf16 autocast where the hardware multiplies bf16 natively (CUDA; CPUs with AVX-512-BF16 or AMX), full
    fp32 elsewhere (see `native_bf16`): emulated bf16 made a training step 13x slower."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=native_bf16(device_type))


def save_checkpoint(model, processor, out: Path, card: str, log_rows: list[dict]) -> None:
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    atomic_write_text(tmp / "README.md", card)
    atomic_write_json(tmp / "training_log.json", log_rows)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


@torch.no_grad()
def tower_features(model, pixels: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """The frozen tower's patch features [n, tokens, d] (the projector's input), as `get_image_features`
    selects them (layer `vision_feature_layer`, CLS dropped), once for the whole training set."""
    layer = model.config.vision_feature_layer
    parts = []
    for start in range(0, len(pixels), batch):
        out = model.model.vision_tower(pixel_values=pixels[start:start + batch].float(), output_hidden_states=True)
        parts.append(out.hidden_states[layer][:, 1:].to(torch.bfloat16))
    return torch.cat(parts)


def answer_loss_backward(adapter, batch, tower_features: torch.Tensor, n_micro: int, device) -> float:
    """One micro-batch of chats: projector on the frozen tower's features, the LM on the chat with those
    tokens in place, cross-entropy on the answers only; gradients accumulated (scaled by 1 / n_micro)."""
    input_ids, labels, attention = (t.to(device) for t in batch)
    with mixed_precision(device.type):
        visual = adapter.projector()(tower_features.float())
        embeds = adapter.embed_with_visual_tokens(input_ids, visual)
        logits = adapter.model(inputs_embeds=embeds, attention_mask=attention).logits
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=-100)
    (loss / n_micro).backward()
    return loss.item()


def resume_point(log_rows: list[dict]) -> tuple[int, int]:
    """(phase, step) the last checkpoint of a run ended at: the next phase continues its schedule there."""
    evals = [row for row in log_rows if row.get("stage") == "eval"]
    if not evals:
        return 0, 0
    return max(int(row.get("phase", 1)) for row in log_rows), int(evals[-1]["step"])


def learning_rate(step: int, total: int, peak: float, warmup: int, start: int) -> float:
    """Warm-up, then cosine decay to 10 % over the whole run; a resumed phase warms up again briefly (its
    optimiser moments start empty) and then follows the same curve. A phase resumed with a larger `total`
    extends the schedule: a warm restart onto the longer curve (its data row records `schedule_steps`)."""
    ramp = min(1.0, (step + 1) / warmup) if start == 0 else min(1.0, (step - start + 1) / 50)
    return peak * ramp * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/tiny-llava"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-scenes", type=int, default=16000)
    parser.add_argument("--vision-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=12000, help="length of the whole schedule, over all phases (a resumed phase "
                             "may extend it: see learning_rate)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--max-turns", type=int, default=6)
    parser.add_argument("--eval-every", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU is lent (minutes instead of hours)")
    parser.add_argument("--recipe", default=tiny_llava.TRAINING, choices=sorted(tiny_llava.RECIPES),
                        help="architecture generation (tiny_llava.RECIPES); v1's own schedule is at commit d4d369a")
    parser.add_argument("--init", type=Path, default=None,
                        help="resume from a checkpoint this command wrote: the next phase continues the schedule "
                             "at the step it reached (new batch order; the vision tower stays frozen)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="end this phase (after an evaluation and a checkpoint) once this much wall time has "
                             "passed; resume with --init")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    started = time.time()
    log_rows: list[dict] = []
    previous_phase, start_step = 0, 0
    if args.init is not None and (args.init / "training_log.json").is_file():
        log_rows.extend(json.loads((args.init / "training_log.json").read_text()))
        previous_phase, start_step = resume_point(log_rows)
    phase = previous_phase + 1

    def log(row: dict) -> None:
        row = {"minutes": round((time.time() - started) / 60, 2), "phase": phase, **row}
        log_rows.append(row)
        print(json.dumps(row), flush=True)

    config = SceneConfig()
    scenes = generate_scenes(args.train_scenes, args.seed + TRAIN_SCENE_SEED_OFFSET, config)
    heldout = heldout_scenes(args.seed)
    pixels = render_pixels(scenes, workers=args.threads, recipe=args.recipe)
    log({"stage": "data", "train_scenes": len(scenes), "bf16_autocast": native_bf16(args.device),
         "schedule_steps": args.steps})  # a later phase may extend the schedule (warm restart): the log says when

    tokenizer = tiny_llava.build_tokenizer()
    processor = tiny_llava.build_processor(tokenizer, args.recipe)
    if args.init is None:
        model = tiny_llava.build_model(args.seed, tokenizer, args.recipe).to(args.device)
        pretrain_vision(model, pixels.to(args.device) if args.device != "cpu" else pixels, scenes, args.vision_steps,
                        64, 2e-3, args.seed, log, tiny_llava.RECIPES[args.recipe].tower_pooling)
    else:
        model = LlavaForConditionalGeneration.from_pretrained(args.init, dtype=torch.float32)
        model.model.vision_tower.requires_grad_(False)
        log({"stage": "init", "from": str(args.init), "resumes_at_step": start_step})
    device = torch.device(args.device)
    model.to(device)
    features = tower_features(model, pixels.to(device) if device.type == "cuda" else pixels).to(device)
    del pixels
    adapter = LlavaAdapter(model, processor)

    phase_seed = args.seed + 1000 * (phase - 1)
    builder = ChatBuilder(adapter, args.max_turns, random.Random(phase_seed))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(phase_seed + 1)
    card = model_card(args)
    running = []
    for step in range(start_step, args.steps):
        model.train()
        idx = torch.randint(0, len(scenes), (args.batch,), generator=gen).tolist()
        lr = learning_rate(step, args.steps, args.lr, 200, start_step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        # micro-batches: CPU attention over ~400-token rows is faster in small batches
        micro = [idx[i:i + args.micro_batch] for i in range(0, len(idx), args.micro_batch)]
        for part in micro:
            batch = collate([builder.encode(scenes[i]) for i in part], tokenizer.pad_token_id)
            running.append(answer_loss_backward(adapter, batch, features[part], len(micro), device))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0:
            log({"stage": "chat", "step": step, "loss": round(float(np.mean(running)), 4), "lr": round(lr, 6)})
            running = []
        last = step == args.steps - 1
        out_of_time = args.minutes is not None and (time.time() - started) / 60 > args.minutes
        if (step + 1) % args.eval_every == 0 or last or out_of_time:
            model.eval()
            log({"stage": "eval", "step": step + 1, **quick_eval(adapter, heldout)})
            save_checkpoint(model, processor, args.out, card, log_rows)
            if out_of_time:
                log({"stage": "stopped", "reason": f"--minutes {args.minutes} reached", "step": step + 1})
                break
    log({"stage": "done" if step == args.steps - 1 else "phase-end", "step": step + 1})
    save_checkpoint(model, processor, args.out, card, log_rows)


def model_card(args) -> str:
    t = tiny_llava.RECIPES[args.recipe]
    return f"""# tiny-llava (recipe {args.recipe})

A real `LlavaForConditionalGeneration` (CLIP vision tower {t.image_size} px / patch {tiny_llava.PATCH_SIZE} = {t.grid}x{t.grid} tokens,
{t.vision_layers} layers, hidden 128; two-layer GELU projector; Llama LM with {t.lm_layers} layers, {t.lm_heads} query heads
sharing {t.lm_kv_heads} key/value heads, hidden 128) with a `LlavaProcessor` that pads to square like LLaVA-1.5,
trained on vlm-mechanisms' synthetic shape scenes (seeds disjoint from every evaluation set's).

Reproduce (2 CPU cores; one schedule of {args.steps} steps, run in phases that each resume the last):
`python -m mechanisms.organisms.train --recipe {args.recipe} --out {args.out} --seed {args.seed} --steps {args.steps} --max-turns {args.max_turns} --minutes 100`,
then `... --init {args.out}` until the log's last row says `done`.

What it was taught (read this before reading a report made on it):
1. Vision tower: multi-label classification of the scene's categories from its patch tokens, each category
   scored on every token by one linear head and pooled by max over tokens ({args.vision_steps} steps, batch 64).
   Image-level labels only: no patch is told what it shows, where it is, or which patches belong together.
   Max pooling (multiple-instance learning) rather than mean pooling because mean pooling rewards every
   token for carrying the whole scene. Measured on this tower's geometry (400 steps, 600 held-out scenes):
   after replacing an object's tokens (one ring wider) by the mean token, the tower's own head still found
   the object 97 % of the time with mean pooling (as after as many random tokens: 97 %); with max pooling
   11 % (random tokens: 98 %). Position table fixed to a
   2-D sine-cosine table of amplitude 1.
2. Tower frozen; projector + LM trained on multi-turn chats (up to {args.max_turns} turns) of the paper's three
   prompts: box (`[x0, y0, x1, y1]` normalised to the padded square, two decimals), list (classes in
   category order) and binary yes/no (present classes, and absent ones, half of them co-occurrence
   partners of a present class). Loss on answers only. Batch {args.batch} (micro-batches of {args.micro_batch}), AdamW lr {args.lr},
   warm-up 200 and cosine decay to 10 % over {args.steps} steps, bf16 autocast where the hardware has
   native bf16 (else fp32; each phase's `data` row in the log says which).

The learning curve (loss, and the localization score on 96 held-out objects every {args.eval_every} steps) is in
`training_log.json`; rows carry their phase.
"""


if __name__ == "__main__":
    main()

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
from mechanisms.geometry import iou, mask_bbox
from mechanisms.models.adapters.base import ModelAdapter
from mechanisms.models.adapters.llava import LlavaAdapter
from mechanisms.organisms import tiny_llava
from mechanisms.storage import atomic_write_json, atomic_write_text
from mechanisms.tasks.prompts import binary_prompt, box_prompt, list_prompt

TRAIN_SCENE_SEED_OFFSET = 1_000_003  # training scenes never share a seed with evaluation sets


def _pixels_for(specs: list[SceneSpec]) -> np.ndarray:
    processor = tiny_llava.build_processor()
    images = [render_scene(spec) for spec in specs]
    out = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    return out.to(torch.float16).numpy()


def render_pixels(scenes: list[SceneSpec], workers: int = 2, chunk: int = 256) -> torch.Tensor:
    chunks = [scenes[i:i + chunk] for i in range(0, len(scenes), chunk)]
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(_pixels_for, chunks))
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
                    lr: float, seed: int, log) -> None:
    """tiny-llava's tower: which categories are in the scene, from the mean of its patch tokens."""
    tower = model.model.vision_tower
    targets = torch.zeros(len(scenes), len(CATEGORY_NAMES))
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            targets[i, obj.category_id - 1] = 1
    pretrain_tower(tower, tower.embeddings.position_embedding.weight, pixels, targets, steps, batch, lr, seed, log)


def pretrain_tower(tower, position_table: torch.nn.Parameter, pixels: torch.Tensor, targets: torch.Tensor,
                   steps: int, batch: int, lr: float, seed: int, log) -> None:
    """Multi-label classification of `targets` [n, categories] from the mean of each image's patch tokens
    (CLS dropped): a global objective only. The position table stays fixed; the tower ends frozen."""
    position_table.requires_grad_(False)
    head = torch.nn.Linear(tower.config.hidden_size, targets.shape[1])
    params = [p for p in tower.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    tower.train()
    for step in range(steps):
        idx = torch.randint(0, len(pixels), (batch,), generator=gen)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = tower(pixel_values=pixels[idx].float()).last_hidden_state[:, 1:]
            logits = head(hidden.mean(1))
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            acc = ((logits.float() > 0) == targets[idx].bool()).float().mean().item()
            log({"stage": "vision", "step": step, "loss": round(loss.item(), 4), "label_acc": round(acc, 4)})
    tower.eval()
    tower.requires_grad_(False)


@torch.no_grad()
def quick_eval(adapter: ModelAdapter, scenes: list[SceneSpec], max_objects: int = 96) -> dict:
    """Greedy box answers on held-out scenes: the paper's localization score, for the learning curve."""
    from mechanisms.tasks.generation import Generator
    from mechanisms.tasks.specs import BOX

    generator = Generator(adapter, batch_size=32)
    images, questions, truths = [], [], []
    for scene in scenes:
        image = render_scene(scene)
        for obj in scene.objects:
            images.append(image)
            questions.append(box_prompt(obj.name))
            truths.append((mask_bbox(render_mask(obj, scene.width, scene.height)), scene.width, scene.height))
        if len(questions) >= max_objects:
            break
    answers = generator.generate(images, questions, max_new_tokens=BOX.max_new_tokens)
    ious = []
    for text, (truth, w, h) in zip(answers, truths):
        box = adapter.parse_box(text, w, h)
        ious.append(iou(box, truth) if box else 0.0)
    ious = np.asarray(ious)
    return {"loc": float(np.mean([(ious >= t).mean() for t in (0.5, 0.7, 0.9)])),
            "acc50": float((ious >= 0.5).mean()), "mean_iou": float(ious.mean()), "n": len(ious)}


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("fixtures/models/tiny-llava"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-scenes", type=int, default=16000)
    parser.add_argument("--vision-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--max-turns", type=int, default=6)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", type=Path, default=None,
                        help="continue from a checkpoint this command wrote (a further instruction-tuning "
                             "phase with its own warm-up and cosine decay; the vision tower stays frozen)")
    parser.add_argument("--tune-tower", type=float, default=0.0, metavar="SCALE",
                        help="also train the vision tower (end-to-end), at SCALE x the learning rate; 0 keeps it frozen")
    parser.add_argument("--phase", type=int, default=1,
                        help="phase number: seeds this phase's batch order and chat sampling")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    started = time.time()
    log_rows: list[dict] = []

    def log(row: dict) -> None:
        row = {"minutes": round((time.time() - started) / 60, 2), "phase": args.phase, **row}
        log_rows.append(row)
        print(json.dumps(row), flush=True)

    config = SceneConfig()
    scenes = generate_scenes(args.train_scenes, args.seed + TRAIN_SCENE_SEED_OFFSET, config)
    heldout = generate_scenes(64, args.seed + 2 * TRAIN_SCENE_SEED_OFFSET, config)
    pixels = render_pixels(scenes, workers=args.threads)
    log({"stage": "data", "train_scenes": len(scenes)})

    tokenizer = tiny_llava.build_tokenizer()
    processor = tiny_llava.build_processor(tokenizer)
    if args.init is None:
        model = tiny_llava.build_model(args.seed, tokenizer)
        pretrain_vision(model, pixels, scenes, args.vision_steps, 64, 2e-3, args.seed, log)
    else:
        model = LlavaForConditionalGeneration.from_pretrained(args.init, dtype=torch.float32)
        model.model.vision_tower.requires_grad_(False)
        previous = args.init / "training_log.json"
        if previous.is_file():
            log_rows.extend({**row, "phase": row.get("phase", 1)} for row in json.loads(previous.read_text()))
        log({"stage": "init", "from": str(args.init), "phase": args.phase})
    adapter = LlavaAdapter(model, processor)

    phase_seed = args.seed + 1000 * (args.phase - 1)
    builder = ChatBuilder(adapter, args.max_turns, random.Random(phase_seed))
    tower = model.model.vision_tower
    if args.tune_tower:  # end-to-end: the LM's answer loss may now shape the tower (position table stays fixed)
        tower.requires_grad_(True)
        tower.embeddings.position_embedding.weight.requires_grad_(False)
    tower_params = [p for p in tower.parameters() if p.requires_grad]
    other_params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("model.vision_tower.")]
    params = other_params + tower_params
    opt = torch.optim.AdamW([{"params": other_params, "scale": 1.0},
                             {"params": tower_params, "scale": args.tune_tower}],
                            lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(phase_seed + 1)
    warmup = 200
    card = model_card(args)
    running = []
    for step in range(args.steps):
        model.train()
        tower.train(bool(args.tune_tower))
        idx = torch.randint(0, len(scenes), (args.batch,), generator=gen).tolist()
        input_ids, labels, attention = collate([builder.encode(scenes[i]) for i in idx], tokenizer.pad_token_id)
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for group in opt.param_groups:
            group["lr"] = lr * group["scale"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=input_ids, pixel_values=pixels[idx].float(), attention_mask=attention).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                               ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running.append(loss.item())
        if step % 50 == 0:
            log({"stage": "chat", "step": step, "loss": round(float(np.mean(running)), 4), "lr": round(lr, 6)})
            running = []
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
            model.eval()
            log({"stage": "eval", "step": step + 1, **quick_eval(adapter, heldout)})
            save_checkpoint(model, processor, args.out, card, log_rows)
    log({"stage": "done", "steps": args.steps})
    save_checkpoint(model, processor, args.out, card, log_rows)


def model_card(args) -> str:
    return f"""# tiny-llava

A real `LlavaForConditionalGeneration` (CLIP vision tower 96 px / patch 8 = 12x12 tokens, 3 layers;
two-layer GELU projector; Llama LM with 6 layers, 4 query heads, 2 key/value heads, hidden 128) with a
`LlavaProcessor` that pads to square like LLaVA-1.5, trained on vlm-mechanisms' synthetic shape scenes.

Reproduce (phase 1; the README lists every phase's command):
`python -m mechanisms.organisms.train --out {args.out} --seed {args.seed} --steps {args.steps} --max-turns {args.max_turns}`
{"" if args.init is None else f"This checkpoint is phase {args.phase}: {args.steps} further steps from the phase {args.phase - 1} checkpoint (`--init`), with a fresh warm-up and cosine decay."}
{"" if not args.tune_tower else f"In this phase the vision tower was trained too (end-to-end, learning rate x{args.tune_tower}), by the same answer loss; its position table stayed fixed."}

What it was taught (read this before reading a report made on it):
1. Vision tower: multi-label classification of the scene's categories from the mean of its patch
   tokens ({args.vision_steps} steps, batch 64). A global objective only: no patch is told what it
   shows or where it is. Position table fixed to a 2-D sine-cosine table.
2. Tower frozen; projector + LM trained on multi-turn chats (up to {args.max_turns} turns) of the
   paper's three prompts: box (`[x0, y0, x1, y1]` normalised to the padded square, two decimals), list
   (classes in category order) and binary yes/no (present classes, and absent ones, half of them
   co-occurrence partners of a present class). Loss on answers only.
   {args.steps} steps, batch {args.batch}, AdamW lr {args.lr}, warm-up and cosine decay, bf16 autocast.

The learning curve is in `training_log.json`.
"""


if __name__ == "__main__":
    main()

"""Train tiny-internvl from a seed: `python -m mechanisms.organisms.train_internvl --out fixtures/models/tiny-internvl`.

The recipe is tiny-llava's (see `mechanisms.organisms.train`), adapted to InternVL's multi-view input:

1. *Vision pre-training* with a global objective per view: multi-label classification of which
   categories are visible in the view (any local tile or the thumbnail), each category scored on every
   patch token and pooled by max (as tiny-llava's: mean pooling spreads a scene's classes into every token).
   No patch is told what it shows or where; the position table is a fixed 2-D sine-cosine table.
2. *Instruction tuning*: the tower frozen (so its pixel-shuffled features are computed once per training
   scene), projector + LM trained on multi-turn chats in InternVL's format, answers only in the loss.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from mechanisms.data.synthetic import CATEGORY_NAMES, SceneConfig, SceneSpec, generate_scenes, render_mask, render_scene
from mechanisms.models.adapters.internvl import InternVLAdapter
from mechanisms.models.registry import native_bf16
from mechanisms.organisms import tiny_internvl
from mechanisms.organisms.train import (
    TRAIN_SCENE_SEED_OFFSET,
    ChatBuilder,
    answer_loss_backward,
    heldout_scenes,
    collate,
    learning_rate,
    pretrain_tower,
    quick_eval,
    resume_point,
    save_checkpoint,
)

MIN_VISIBLE_PIXELS = 16  # a category counts as visible in a view when this much of its mask falls inside


def _views_of(specs: list[SceneSpec]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per scene: the processor's pixel views [n_views, 3, T, T] (fp16) and per-view category labels."""
    processor = tiny_internvl.build_processor()
    adapter = InternVLAdapter(tiny_internvl.build_model(0, processor.tokenizer), processor)  # for its views
    out = []
    for spec in specs:
        pixels = processor.image_processor(images=[render_scene(spec)], return_tensors="pt")["pixel_values"]
        views = adapter.views(spec.width, spec.height)
        labels = np.zeros((len(views), len(CATEGORY_NAMES)), dtype=np.float32)
        for obj in spec.objects:
            mask = render_mask(obj, spec.width, spec.height)
            for k, view in enumerate(views):
                e = view.extent()
                inside = mask[max(0, int(e.y0)):int(math.ceil(e.y1)), max(0, int(e.x0)):int(math.ceil(e.x1))]
                if inside.sum() >= MIN_VISIBLE_PIXELS:
                    labels[k, obj.category_id - 1] = 1
        assert pixels.shape[0] == len(views), (pixels.shape, len(views))
        out.append((pixels.to(torch.float16).numpy(), labels))
    return out


def render_views(scenes: list[SceneSpec], workers: int, chunk: int = 200) -> list[tuple[np.ndarray, np.ndarray]]:
    chunks = [scenes[i:i + chunk] for i in range(0, len(scenes), chunk)]
    with ProcessPoolExecutor(workers) as pool:
        return [item for part in pool.map(_views_of, chunks) for item in part]


def pretrain_vision(model, views: list[tuple[np.ndarray, np.ndarray]], steps: int, batch: int, lr: float,
                    seed: int, log, device: str = "cpu", pooling: str = "max") -> None:
    """tiny-internvl's tower: which categories are visible in each view (tile or thumbnail)."""
    tower = model.model.vision_tower
    pixels = torch.from_numpy(np.concatenate([p for p, _ in views])).to(device)
    targets = torch.from_numpy(np.concatenate([t for _, t in views]))
    pretrain_tower(tower, tower.embeddings.position_embeddings, pixels, targets, steps, batch, lr, seed, log,
                   pooling=pooling)


@torch.no_grad()
def shuffled_features(model, views: list[tuple[np.ndarray, np.ndarray]], batch: int = 256) -> list[torch.Tensor]:
    """The frozen tower's pixel-shuffled features per scene [n_views * tokens, 4 * d] (the projector's input),
    computed exactly as `get_image_features` does before its projector."""
    inner = model.model
    pixels = torch.from_numpy(np.concatenate([p for p, _ in views]))
    parts = []
    for start in range(0, len(pixels), batch):
        chunk = pixels[start:start + batch].float().to(next(inner.parameters()).device)
        hidden = inner.vision_tower(pixel_values=chunk).last_hidden_state[:, 1:]
        side = int(hidden.shape[1] ** 0.5)
        grid = inner.pixel_shuffle(hidden.reshape(hidden.shape[0], side, side, -1), inner.config.downsample_ratio)
        parts.append(grid.reshape(grid.shape[0], -1, grid.shape[-1]).to(torch.bfloat16))
    flat = torch.cat(parts)
    counts = [p.shape[0] for p, _ in views]
    return [chunk.reshape(-1, chunk.shape[-1]) for chunk in flat.split(counts)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("fixtures/models/tiny-internvl"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-scenes", type=int, default=10000)
    parser.add_argument("--vision-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=12000, help="length of the whole schedule, over all phases")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--max-turns", type=int, default=6)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU is lent")
    parser.add_argument("--recipe", default=tiny_internvl.TRAINING, choices=sorted(tiny_internvl.RECIPES),
                        help="LM generation (tiny_internvl.RECIPES); v1's own schedule is at commit d4d369a")
    parser.add_argument("--init", type=Path, default=None,
                        help="resume from a checkpoint this command wrote: the next phase continues the schedule "
                             "at the step it reached (new batch order; the tower stays frozen)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop early (after the next evaluation) once this much wall time has passed")
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
    args.phase = phase = previous_phase + 1

    def log(row: dict) -> None:
        row = {"minutes": round((time.time() - started) / 60, 2), "phase": phase, **row}
        log_rows.append(row)
        print(json.dumps(row), flush=True)

    config = SceneConfig()
    scenes = generate_scenes(args.train_scenes, args.seed + TRAIN_SCENE_SEED_OFFSET, config)
    heldout = heldout_scenes(args.seed)
    views = render_views(scenes, workers=args.threads)
    log({"stage": "data", "train_scenes": len(scenes), "views": sum(len(p) for p, _ in views),
         "bf16_autocast": native_bf16(args.device), "schedule_steps": args.steps})

    tokenizer = tiny_internvl.build_tokenizer()
    processor = tiny_internvl.build_processor(tokenizer)
    if args.init is None:
        model = tiny_internvl.build_model(args.seed, tokenizer, recipe=args.recipe).to(args.device)
        pretrain_vision(model, views, args.vision_steps, 64, 2e-3, args.seed, log, args.device,
                        tiny_internvl.RECIPES[args.recipe].tower_pooling)
    else:
        from transformers import InternVLForConditionalGeneration

        model = InternVLForConditionalGeneration.from_pretrained(args.init, dtype=torch.float32)
        model.model.vision_tower.requires_grad_(False)
        log({"stage": "init", "from": str(args.init), "resumes_at_step": start_step})
    device = torch.device(args.device)
    model.to(device)
    features = [f.to(device) for f in shuffled_features(model, views)]
    del views
    log({"stage": "features", "tokens": sum(f.shape[0] for f in features)})
    adapter = InternVLAdapter(model, processor)
    phase_seed = args.seed + 1000 * (phase - 1)
    builder = ChatBuilder(adapter, args.max_turns, random.Random(phase_seed),
                          follow_up=tiny_internvl.FOLLOW_UP_TURN, reply=tiny_internvl.REPLY)
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
        # micro-batches: CPU attention over ~500-token rows is several times faster in small batches
        micro = [idx[i:i + args.micro_batch] for i in range(0, len(idx), args.micro_batch)]
        for part in micro:
            batch = collate([builder.encode(scenes[i]) for i in part], tokenizer.pad_token_id)
            running.append(answer_loss_backward(adapter, batch, torch.cat([features[i] for i in part]), len(micro),
                                                device))
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
    return f"""# tiny-internvl

A real `InternVLForConditionalGeneration`: InternViT-style tower ({tiny_internvl.TILE_SIZE} px tiles, patch {tiny_internvl.PATCH_SIZE} =
{tiny_internvl.PATCH_GRID}x{tiny_internvl.PATCH_GRID} patches, 3 layers, hidden 128), pixel shuffle 0.5 ({tiny_internvl.TOKENS_PER_VIEW} tokens per view), two-layer MLP projector, Qwen3 LM
({tiny_internvl.RECIPES[args.recipe].lm_layers} layers, {tiny_internvl.RECIPES[args.recipe].lm_heads} query heads, {tiny_internvl.RECIPES[args.recipe].lm_kv_heads} key/value heads, hidden 128; recipe {args.recipe}); an `InternVLProcessor` with dynamic tiling
(at most {tiny_internvl.MAX_TILES} local tiles, a global thumbnail last when there is more than one tile), trained
on vlm-mechanisms' synthetic shape scenes.

Reproduce (one schedule of {args.steps} steps, in phases that each resume the last; 2 CPU cores, or `--device cuda`):
`python -m mechanisms.organisms.train_internvl --recipe {args.recipe} --out {args.out} --seed {args.seed} --steps {args.steps}
--train-scenes {args.train_scenes} --batch {args.batch} --micro-batch {args.micro_batch} --max-turns {args.max_turns} --minutes 100`,
then the same with `--init {args.out}` until the log's last row says `done`. This checkpoint ends phase {args.phase}.

What it was taught (read this before reading a report made on it):
1. Vision tower: multi-label classification of the categories visible in each view (local tile or
   thumbnail; >= {MIN_VISIBLE_PIXELS} mask pixels inside), each category scored on every patch token by one
   linear head and pooled by max over the view's tokens ({args.vision_steps} steps, batch 64 views).
   Image-level labels only; position table fixed (2-D sine-cosine).
2. Tower frozen; projector + LM trained on multi-turn chats (up to {args.max_turns} turns) of the paper's three
   prompts in InternVL's chat format: box (`<box>[[x0, y0, x1, y1]]</box>`, integers on the 0-1000
   scale of the image), list (classes in category order), binary yes/no (present and absent classes,
   half of the absent ones co-occurrence partners). Loss on answers only. Batch {args.batch}, AdamW lr
   {args.lr}, warm-up and cosine decay, bf16 autocast where the hardware has native bf16 (else fp32). The stop step is in `training_log.json`.
"""


if __name__ == "__main__":
    main()

"""The shared prefix of the circuit sweeps (§3.3): run each image's prompt up to the end of its image once.

Knockout from post-image queries and head patching at prompt positions leave everything up to the end
of the image unchanged. So each image's prefix (system text + image tokens) runs once with the KV cache
on, and only the suffix (the question, the teacher-forced answer or the generated tokens) runs per
variant, many variants per batch. Three things keep the suffix cheap at the paper's size:

- **Shared-prefix attention** (`on_prefix`): the prefix keys/values stay one batch-1 tensor per layer.
  The suffix's queries attend to them in one grouped matmul for the whole batch and to their own keys
  causally, merged in one softmax; nothing is copied per variant, and no explicit [B, T, T] mask is built
  (knockout, when asked, is a mask on the prefix keys of the rows that block that layer).
- **Branching by layer** (`branching`): a variant that first changes layer l computes layers < l
  exactly as the base run did, so it joins the batch at layer l from the base run's hidden state there.
- **Batches sized by memory** (`rows_that_fit`), not a constant.

The naive references (`experiments.reference`) recompute everything and are the tests' oracle.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

SHARED_PREFIX = "vlm_shared_prefix"  # the attention implementation's registered name


@dataclass
class Prefix:
    """One image's prompt, run up to the end of its image tokens, with the cache kept for reuse."""

    inputs: dict
    end: int  # first position after the image
    cache: object
    image_positions: torch.Tensor
    position_offset: int = 0  # text after the image sits at its index + this (`ModelAdapter.text_position_offset`)

    @property
    def suffix_ids(self) -> torch.Tensor:
        """[1, S]: the prompt (and any teacher-forced answer) after the image."""
        return self.inputs["input_ids"][:, self.end:]

    def keys(self, layer: int) -> torch.Tensor:
        return self.cache.layers[layer].keys

    def values(self, layer: int) -> torch.Tensor:
        return self.cache.layers[layer].values


@torch.no_grad()
def run_prefix(adapter, inputs: dict) -> Prefix:
    """The single-image `inputs` (prompt, maybe with a teacher-forced answer) up to the image's end."""
    device = next(adapter.model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    positions = adapter.image_token_mask(inputs["input_ids"])[0].nonzero()[:, 0]
    end = int(positions[-1]) + 1
    if not bool(inputs["attention_mask"][:, :end].all()):  # the shared-prefix attention reads every prefix key
        raise ValueError("a shared prefix holds padding: run one unpadded prompt per prefix")
    features = adapter.visual_tokens(inputs)
    out = adapter.model(input_ids=inputs["input_ids"][:, :end], attention_mask=inputs["attention_mask"][:, :end],
                        **adapter.visual_inputs(features), **adapter.layout_inputs(inputs, end), use_cache=True)
    return Prefix(inputs, end, out.cache if getattr(out, "cache", None) is not None else out.past_key_values,
                  positions, adapter.text_position_offset(inputs))


# ----- shared-prefix attention ---------------------------------------------------------------------------
@dataclass
class _OnPrefix:
    prefix: Prefix
    knockout: object | None  # interventions.knockout.KnockoutSpec over absolute positions, or None


_active: list[_OnPrefix] = []


def _shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                             sliding_window=None, **kwargs):
    """Attention of suffix queries [B, H, q, D] over the shared prefix (batch 1) and their own keys [B, KV, S, D]
    (the suffix so far: with a cache, S - q earlier suffix positions come first). Returns [B, q, H, D].

    The two parts are computed apart and merged exactly (each part's running max and sum of exponentials,
    as in cascade attention): the prefix part is one matmul over every row's queries, with no copy of
    the prefix per row and no [B, q, P + S] score tensor."""
    context = _active[-1]
    prefix_keys, prefix_values = context.prefix.keys(module.layer_idx), context.prefix.values(module.layer_idx)
    batch, n_heads, q_len, head_dim = query.shape
    n_kv, s_len, p_len = key.shape[1], key.shape[2], prefix_keys.shape[2]
    group = n_heads // n_kv  # query head h reads key/value head h // group (transformers' repeat_kv order)
    rows = group * q_len
    scaling = head_dim ** -0.5 if scaling is None else scaling
    device = query.device
    wide = torch.float64 if query.dtype == torch.float64 else torch.float32  # scores and softmax
    q_pos = p_len + torch.arange(s_len - q_len, s_len, device=device)  # absolute query positions

    grouped = query.reshape(batch, n_kv, rows, head_dim)
    across_rows = grouped.transpose(0, 1).reshape(n_kv, batch * rows, head_dim)
    on_prefix = torch.matmul(across_rows, prefix_keys[0].transpose(-1, -2).to(query.dtype)).to(wide).mul_(scaling)
    blocked = _blocked_prefix_keys(context.knockout, module.layer_idx, batch, q_pos, p_len, sliding_window)
    if blocked is not None:  # [B, q, P] -> the score layout [KV, B, G, q, P]
        on_prefix.view(n_kv, batch, group, q_len, p_len).masked_fill_(blocked[None, :, None], float("-inf"))
    on_suffix = torch.matmul(grouped, key.transpose(-1, -2)).to(wide).mul_(scaling)
    k_pos = p_len + torch.arange(s_len, device=device)
    allowed = k_pos[None, :] <= q_pos[:, None]
    if sliding_window:
        allowed &= q_pos[:, None] - k_pos[None, :] < sliding_window
    on_suffix.view(batch, n_kv, group, q_len, s_len).masked_fill_(~allowed, float("-inf"))

    prefix_max = on_prefix.amax(-1, keepdim=True).clamp_min(torch.finfo(wide).min)  # all-blocked rows
    prefix_exp = on_prefix.sub_(prefix_max).exp_()
    prefix_sum = prefix_exp.sum(-1, keepdim=True)
    prefix_out = torch.matmul(prefix_exp.to(value.dtype), prefix_values[0].to(value.dtype)).to(wide)

    def as_rows(t):  # [KV, B * rows, x] -> [B, KV, rows, x]
        return t.view(n_kv, batch, rows, t.shape[-1]).transpose(0, 1)

    prefix_max, prefix_sum, prefix_out = as_rows(prefix_max), as_rows(prefix_sum), as_rows(prefix_out)
    suffix_max = on_suffix.amax(-1, keepdim=True)
    suffix_exp = on_suffix.sub_(suffix_max).exp_()
    suffix_sum = suffix_exp.sum(-1, keepdim=True)
    suffix_out = torch.matmul(suffix_exp.to(value.dtype), value).to(wide)
    top = torch.maximum(prefix_max, suffix_max)
    prefix_weight, suffix_weight = (prefix_max - top).exp_(), (suffix_max - top).exp_()
    out = (prefix_out * prefix_weight + suffix_out * suffix_weight) / (prefix_sum * prefix_weight
                                                                      + suffix_sum * suffix_weight)
    return out.to(value.dtype).reshape(batch, n_heads, q_len, head_dim).transpose(1, 2).contiguous(), None


def _blocked_prefix_keys(spec, layer: int, batch: int, q_pos: torch.Tensor, p_len: int,
                         sliding_window: int | None) -> torch.Tensor | None:
    """Bool [B, q, P]: prefix keys a row's query may not see (its knockout at this layer, a sliding
    window), or None when every query sees the whole prefix."""
    device = q_pos.device
    blocked = None
    if spec is not None:
        rows = spec.elements_blocking(layer).to(device)[:batch]  # the rows present at this layer
        if bool(rows.any()):
            if bool(spec.keys[:, p_len:].any()):
                raise ValueError("shared-prefix knockout blocks prefix keys only")
            blocked = (spec.keys.to(device)[:batch, None, :p_len]
                       & (q_pos[None, :, None] >= spec.query_from.to(device)[:batch, None, None])
                       & rows[:, None, None])
    if sliding_window and int(q_pos[-1]) >= sliding_window:
        outside = (q_pos[:, None] - torch.arange(p_len, device=device)[None, :] >= sliding_window)[None]
        blocked = outside.expand(batch, -1, -1) if blocked is None else blocked | outside
    return blocked


def _no_mask(*args, **kwargs):
    return None  # masking is done inside `_shared_prefix_attention`


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(SHARED_PREFIX, _shared_prefix_attention)
    AttentionMaskInterface.register(SHARED_PREFIX, _no_mask)


@contextlib.contextmanager
def on_prefix(adapter, prefix: Prefix, knockout=None):
    """Within the block, LM forwards run the suffix of `prefix` (no cache needed for the prefix: pass
    `suffix_position_ids`): every batch row sees the same prefix; `knockout` blocks prefix keys per row."""
    _register()
    previous = adapter.text_attention()
    adapter.set_text_attention(SHARED_PREFIX)
    _active.append(_OnPrefix(prefix, knockout))
    try:
        yield
    finally:
        _active.pop()
        adapter.set_text_attention(previous)


def suffix_position_ids(prefix: Prefix, start: int, length: int) -> torch.Tensor:
    """Position ids [1, length] of suffix positions start.. (0 = first position after the image); a family with
    multimodal RoPE shifts them by its offset (the same on every axis, so 1-D ids suffice)."""
    first = prefix.end + start + prefix.position_offset
    return torch.arange(first, first + length, device=prefix.suffix_ids.device)[None]


# ----- branching by layer ----------------------------------------------------------------------------------
def _pass_through(hidden_states, *args, **kwargs):
    """The forward of a decoder layer no row of the batch runs (their rows join later)."""
    return hidden_states


@contextlib.contextmanager
def recording_layer_inputs(adapter, store: dict[int, torch.Tensor]):
    """Fill `store[l]` with the hidden states entering LM layer l (batch row 0) in the block's forward."""
    def hook(module, args, kwargs, index):
        hidden = args[0] if args else kwargs["hidden_states"]
        store[index] = hidden[:1].detach()

    handles = [layer.register_forward_pre_hook(lambda m, a, k, i=i: hook(m, a, k, i), with_kwargs=True)
               for i, layer in enumerate(adapter.language_layers())]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _replace_hidden(args, kwargs, hidden):
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@contextlib.contextmanager
def branching(adapter, base_inputs: dict[int, torch.Tensor] | None, joining: dict[int, int]):
    """Rows join the batch at the layer where they first differ from the base run: `joining[l]` rows enter
    layer l from the base run's hidden state there (`base_inputs[l]`, [1, S, d]; None: the live batch's
    row 0 is the base run). Layers before the first join are skipped; the forward's own input batch must
    equal `joining[first]` rows. Row order: by join layer, then as counted."""
    layers = adapter.language_layers()
    first = min(joining)
    own = [layer.__dict__.get("forward") for layer in layers[:first]]  # a tracer's wrapper, if any
    for layer in layers[:first]:  # the module tree stays as it is (hooks on its parts keep working)
        layer.forward = _pass_through

    def hook(module, args, kwargs, index):
        hidden = args[0] if args else kwargs["hidden_states"]
        if index == first:
            if base_inputs is None:
                return None
            return _replace_hidden(args, kwargs, base_inputs[index].to(hidden.dtype).expand(joining[index], -1, -1))
        base = hidden[:1] if base_inputs is None else base_inputs[index].to(hidden.dtype)
        return _replace_hidden(args, kwargs, torch.cat([hidden, base.expand(joining[index], -1, -1)]))

    handles = [layers[index].register_forward_pre_hook(lambda m, a, k, i=index: hook(m, a, k, i), with_kwargs=True)
               for index in sorted(joining)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for layer, forward in zip(layers[:first], own):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


# ----- greedy decoding on the prefix -----------------------------------------------------------------------
_SETTINGS_GREEDY_IGNORES = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None,
                            "min_length": 0, "min_new_tokens": None, "suppress_tokens": None,
                            "begin_suppress_tokens": None, "forced_bos_token_id": None,
                            "forced_eos_token_id": None, "sequence_bias": None}


def stop_tokens(adapter) -> tuple[list[int], int]:
    """(end-of-answer token ids, pad id) from the checkpoint's generation config, as `generate` uses them;
    a config asking for more than plain greedy decoding is refused rather than silently ignored."""
    config = adapter.model.generation_config
    changed = [name for name, default in _SETTINGS_GREEDY_IGNORES.items()
               if getattr(config, name, default) not in (default, None, 0, 1.0)]
    if changed:
        raise ValueError(f"the checkpoint's generation config sets {changed}: decoding on a shared prefix "
                         "implements plain greedy decoding only")
    eos = config.eos_token_id if config.eos_token_id is not None else adapter.tokenizer.eos_token_id
    pad = config.pad_token_id if config.pad_token_id is not None else adapter.tokenizer.pad_token_id
    return ([eos] if isinstance(eos, int) else list(eos)), pad


@torch.no_grad()
def greedy_on_prefix(adapter, prefix: Prefix, rows: int, max_new_tokens: int, knockout=None,
                     joining: dict[int, int] | None = None) -> torch.Tensor:
    """Greedy answers [rows, <= max_new_tokens] of `rows` variants continuing `prefix`'s suffix, as
    `generate(do_sample=False)` writes them (pad after a row's end token). `joining` (see `branching`,
    with row 0 the base run: `joining[0] >= 1`) lets rows that first differ at layer l share the suffix's
    layers < l with row 0; their cache entries there are row 0's."""
    from transformers import DynamicCache

    eos, pad = stop_tokens(adapter)
    model, device = adapter.model, prefix.suffix_ids.device
    eos = torch.tensor(eos, device=device)
    cache = DynamicCache()
    s_len = prefix.suffix_ids.shape[1]
    tokens, finished = [], torch.zeros(rows, dtype=torch.bool, device=device)
    with on_prefix(adapter, prefix, knockout):
        branch = branching(adapter, None, joining) if joining else contextlib.nullcontext()
        first_rows = joining[0] if joining else rows
        with branch:
            logits = model(input_ids=prefix.suffix_ids.expand(first_rows, -1), cache=cache, use_cache=True,
                           position_ids=suffix_position_ids(prefix, 0, s_len), logits_to_keep=1).logits
        for layer in cache.layers:  # rows that joined later share row 0's keys/values below their layer
            missing = rows - layer.keys.shape[0]
            if missing:
                layer.keys = torch.cat([layer.keys, layer.keys[:1].expand(missing, -1, -1, -1)])
                layer.values = torch.cat([layer.values, layer.values[:1].expand(missing, -1, -1, -1)])
        for step in range(max_new_tokens):
            chosen = torch.where(finished, pad, logits[:, -1].argmax(-1))
            tokens.append(chosen)
            finished |= torch.isin(chosen, eos)
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            logits = model(input_ids=chosen[:, None], cache=cache, use_cache=True,
                           position_ids=suffix_position_ids(prefix, s_len + step, 1), logits_to_keep=1).logits
    return torch.stack(tokens, 1)


# ----- memory ----------------------------------------------------------------------------------------------
def memory_budget(device: torch.device) -> int:
    """Bytes a sweep's batch may use for transient activations: a quarter of the GPU's free memory, or
    `VLM_CPU_MEMORY_BUDGET` bytes (default 2 GiB) on a CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4
    return int(os.environ.get("VLM_CPU_MEMORY_BUDGET", 2 << 30))


def suffix_row_bytes(heads: int, hidden: int, intermediate: int, item: int, suffix_len: int, context_len: int) -> int:
    """Transient bytes of one suffix row in one decoder layer: the wider of the attention scores (float32,
    prefix part and suffix part, exponentials in place) and the MLP's intermediate activations, plus the
    residual stream, times the suffix length."""
    attention = heads * context_len * 4 * 2
    mlp = intermediate * 3 * item
    return suffix_len * (max(attention, mlp) + 4 * hidden * item)


def rows_that_fit(adapter, suffix_len: int, context_len: int, budget: int, most: int) -> int:
    """How many suffix rows one forward may carry within `budget` (`suffix_row_bytes` each); 1 to `most`."""
    text = adapter.model.config.text_config
    item = torch.finfo(adapter.model.dtype).bits // 8
    per_row = suffix_row_bytes(text.num_attention_heads, text.hidden_size,
                               getattr(text, "intermediate_size", 4 * text.hidden_size), item, suffix_len, context_len)
    return max(1, min(most, budget // max(per_row, 1)))


def progress(items, description: str):
    """A progress bar on a long sweep (shown on a terminal, silent in logs and under xdist)."""
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="sample", leave=False, disable=None)

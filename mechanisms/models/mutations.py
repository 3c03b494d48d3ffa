"""Planted breakage: copies of a model with one mechanism destroyed, to show that the claims notice.

A claims suite is trusted when each claim passes on a model with the mechanism *and* fails on one without
it. `mutate(adapter, name)` breaks a loaded model in place, the same way for every family (it reaches the
model only through its adapter: the vision tower, the projector, the LM's layers and head outputs):

- `untrained`: every weight re-drawn from the config's own initialisation (every claim should fail);
- `vision-reinit`: the vision tower re-initialised, the rest kept (every claim that needs the image);
- `token-permutation`: the projector's output tokens of every view spatially permuted by one fixed
  permutation (the LM was trained on ordered tokens: containerization and the positional claims);
- `early-attention-off`: the attention output of the LM's first half of layers zeroed at every position
  after the image (text can no longer read the image early: the knockout and head claims).

`pytest claims --mutation NAME` runs the suite on the mutant (its cache and report are the mutant's own),
and `python -m mechanisms.compare` against the unmutated model's report shows it as a regression.
"""

from __future__ import annotations

import torch

MUTATIONS = {
    "untrained": "every weight re-initialised from the config",
    "vision-reinit": "the vision tower re-initialised",
    "token-permutation": "the projector's output tokens spatially permuted (one fixed permutation per view)",
    "early-attention-off": "attention output of the LM's first half of layers zeroed after the image",
}
SEED = 0  # one fixed mutant per name: same seed, same report


def mutate(adapter, name: str, seed: int = SEED) -> None:
    """Break `adapter.model` in place as MUTATIONS[name] says (hooks stay on the model for its lifetime)."""
    if name not in MUTATIONS:
        raise ValueError(f"unknown mutation {name!r}: choose from {', '.join(MUTATIONS)}")
    {"untrained": _reinitialise_all, "vision-reinit": _reinitialise_tower,
     "token-permutation": _permute_projector_tokens, "early-attention-off": _zero_early_attention}[name](adapter, seed)


def _fresh(module: torch.nn.Module, seed: int) -> dict:
    """The state dict of a freshly initialised module of the same class and config (seeded, RNG restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(module)(module.config)
    return fresh.state_dict()


def _reinitialise_all(adapter, seed: int) -> None:
    model = adapter.model
    fresh = _fresh(model, seed)
    missing, unexpected = model.load_state_dict(fresh, strict=False)
    if unexpected or [key for key in missing if key in dict(model.named_parameters())]:
        raise RuntimeError(f"re-initialisation left weights untouched: {missing[:3]} {unexpected[:3]}")


def _reinitialise_tower(adapter, seed: int) -> None:
    tower = adapter.model.model.vision_tower
    tower.load_state_dict(_fresh(tower, seed))


def _permute_projector_tokens(adapter, seed: int) -> None:
    """Tokens of each view [views, tokens, d] leave the projector in one fixed shuffled order."""
    generator = torch.Generator().manual_seed(seed)
    orders: dict[int, torch.Tensor] = {}

    def hook(module, args, output):
        tokens = output.shape[-2]
        if tokens not in orders:
            orders[tokens] = torch.randperm(tokens, generator=generator)
        return output[..., orders[tokens].to(output.device), :]

    adapter.projector().register_forward_hook(hook)


def _zero_early_attention(adapter, seed: int) -> None:
    """Zero every head's output in layers [0, L/2) at post-image positions.

    Which positions follow the image is read from the LM's input embeddings: a text position's embedding is
    an exact row of the vocabulary table, an image position's (a projected visual token, or an interpolated
    one under Integrated Gradients) is not. A pass without image positions (a cached continuation) lies
    wholly after the image.
    """
    lookup = adapter.model.get_input_embeddings()
    with torch.no_grad():  # what the embedding module emits for every token (a module may scale its rows)
        embedding = lookup(torch.arange(lookup.num_embeddings, device=lookup.weight.device))
    language_model = adapter.language_layers()[0]
    for module in adapter.model.modules():  # the decoder stack: the module whose `layers` holds layer 0
        layers = getattr(module, "layers", None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) and layers[0] is language_model:
            language_model = module
            break
    state: dict[str, torch.Tensor] = {}

    def read_positions(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            raise RuntimeError("early-attention-off needs the LM to be called with inputs_embeds")
        flat = embeds.detach().reshape(-1, embeds.shape[-1]).to(embedding.dtype)
        is_text = torch.zeros(flat.shape[0], dtype=torch.bool, device=flat.device)
        table = embedding.float()  # once per pass; chunks of positions bound the distance matrix (a 152k vocab)
        for start in range(0, flat.shape[0], 1024):  # nearest vocabulary row, then exact equality
            part = flat[start:start + 1024]
            nearest = torch.cdist(part.float(), table).argmin(1)
            is_text[start:start + 1024] = (embedding[nearest] == part).all(1)
        is_image = ~is_text.reshape(embeds.shape[:2])
        seen = torch.cumsum(is_image.long(), 1)
        total = seen[:, -1:]
        state["after_image"] = torch.where(total > 0, (seen == total) & ~is_image, torch.ones_like(is_image))

    language_model.register_forward_pre_hook(read_positions, with_kwargs=True)
    half = adapter.head_layout().n_layers // 2
    for layer in range(half):
        def zero(module, args):
            keep = (~state["after_image"]).to(args[0].dtype).unsqueeze(-1)
            if keep.shape[0] != args[0].shape[0]:  # rows that joined mid-pass copy row 0 (`prefix.branching`)
                keep = keep[:1].expand(args[0].shape[0], -1, -1)
            return (args[0] * keep, *args[1:])
        adapter.head_outputs(layer).register_forward_pre_hook(zero)

"""Sites: the one vocabulary for "where inside the model" (as `View` is for "where in the image").

A site is a vision-backbone layer, the projector output, an LM layer, or one attention head of an LM
layer. Every name is built here and nowhere else, and the same names key probe stages, head hooks,
knockout groups and report columns:

    vision.03    the vision backbone's layer 3 (00: its embeddings)
    projector    the image tokens at the LM input
    llm.03       the LM's decoder layer 3 (its output)
    llm.03.h05   query head 5 of LM layer 3 (with grouped-query attention, `Head.kv_head` says which
                 key/value head it reads)
    layers 0-3   a group of consecutive LM layers (knockout); `layer 3` one alone; `all layers` every one

Which module a site is (`self_attn.o_proj`, the text model's attention switch) is the adapter's
knowledge (`ModelAdapter.head_outputs`, `language_layers`, `set_text_attention`).
"""

from __future__ import annotations

from typing import NamedTuple

VISION, PROJECTOR, LLM = "vision", "projector", "llm"


class Head(NamedTuple):
    """One query head of one LM layer (a tuple, so it sorts and compares as (layer, head))."""

    layer: int
    head: int

    @property
    def name(self) -> str:
        return f"{llm_layer(self.layer)}.h{self.head:02d}"

    def kv_head(self, n_query_heads: int, n_kv_heads: int) -> int:
        """The key/value head this query head reads under grouped-query attention."""
        return self.head // (n_query_heads // n_kv_heads)


def vision_layer(layer: int) -> str:
    return f"{VISION}.{layer:02d}"


def llm_layer(layer: int) -> str:
    return f"{LLM}.{layer:02d}"


def stage_of(site: str) -> str:
    """"vision", "projector" or "llm" for a stage name."""
    return site.split(".")[0]


def layer_of(site: str) -> int:
    """The layer index in "vision.03" / "llm.03" (and "llm.03.h05")."""
    return int(site.split(".")[1])


ALL_LAYERS = "all layers"


def layer_span(first: int, last: int) -> str:
    """The name of LM layers first..last (inclusive) taken as one group: "layers 0-3"."""
    return f"layers {first}-{last}"


def single_layer(layer: int) -> str:
    """The name of one LM layer taken alone (Figure 12's single-layer knockout): "layer 3"."""
    return f"layer {layer}"


def all_heads(n_layers: int, n_query_heads: int) -> list[Head]:
    """Every query head, layer-major (the order of mediation sweeps and MF matrices)."""
    return [Head(layer, head) for layer in range(n_layers) for head in range(n_query_heads)]

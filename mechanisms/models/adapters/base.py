"""What every model family must tell the rest of the suite. Claims and interventions talk only to this."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from PIL import Image

from mechanisms.geometry import Box, View

NUMBER = r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?"  # a number as answers write it (box parsers)
NEUTRAL_QUESTION = "Describe the image."  # the text beside an image when only its visual tokens matter


def first_box(pattern: re.Pattern, text: str, scale: float = 1.0) -> tuple[float, float, float, float] | None:
    """The first match of `pattern` (four number groups) in `text`, divided by `scale`, as a box in [0, 1];
    None when there is none or it is not a box (outside [0, 1], or x1 <= x0, or y1 <= y0)."""
    match = pattern.search(text)
    if not match:
        return None
    values = tuple(float(v) / scale for v in match.groups())
    if not all(0.0 <= v <= 1.0 for v in values) or values[2] <= values[0] or values[3] <= values[1]:
        return None
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class HeadLayout:
    """Where attention heads live: `o_proj` of each LM layer reads [B, T, n_query_heads * head_dim]."""

    n_layers: int
    n_query_heads: int
    n_kv_heads: int
    head_dim: int


class ModelAdapter(ABC):
    """Architecture-specific knowledge of one model family, and nothing else."""

    family: ClassVar[str]

    def __init__(self, model, processor, system_prompt: str | None = None, processor_settings: dict | None = None):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.system_prompt = system_prompt  # §6.2's {System}: the text the model was trained with (profile data)
        # keywords of every processor call the profile fixes (Gemma 3's pan-and-scan), profile data too
        self.processor_settings = dict(processor_settings or {})

    # ----- prompts -------------------------------------------------------------------------------
    def chat_text(self, question: str) -> str:
        """The full prompt text ({System} {Image} {Task}, §6.2) ending where the answer begins. The system text
        goes in as the chat template's system turn (the real checkpoints' templates render it as the model
        was trained: Vicuna's `{system} USER: ...`, InternVL's `<|im_start|>system ...`); None leaves the
        template's own."""
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        if self.system_prompt:
            conversation.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        bos = self.tokenizer.bos_token
        if bos and text.startswith(bos) and self._tokenizer_adds_bos():
            text = text[len(bos):]  # Gemma's template writes <bos> and its tokenizer adds one: the model saw one
        return text

    def _tokenizer_adds_bos(self) -> bool:
        return self.tokenizer("x")["input_ids"][:1] == [self.tokenizer.bos_token_id]

    def encode(self, images: list[Image.Image], questions: list[str]) -> dict[str, torch.Tensor]:
        """Processor inputs for a batch (left-padded so generation continues every row)."""
        self.tokenizer.padding_side = "left"
        texts = [self.chat_text(q) for q in questions]
        return self.processor(images=self.processor_images(images), text=texts, return_tensors="pt", padding=True,
                              **self.processor_call_settings())

    def processor_call_settings(self) -> dict:
        """Keywords of every processor call: the profile's settings (a family passes every setting its views
        depend on, so that the processor cannot fall back to defaults the views do not know)."""
        return dict(self.processor_settings)

    def processor_images(self, images: list[Image.Image]) -> list:
        """The `images` argument of the processor for one image per prompt (Gemma 3's wants them per prompt)."""
        return list(images)

    # How the LM is told where an image token is, when it is not the 1-D sequence the paper's models read (the
    # positional claims record it: "the LM rebuilds the grid" is a different question when it is handed 2-D).
    image_positions_note: ClassVar[str | None] = None

    answer_separator: ClassVar[str] = " "  # what the chat template puts between the prompt and the answer
    yes_answer: ClassVar[str] = "Yes"  # the binary prompt's correct answer as this family writes it

    def encode_with_answer(self, image: Image.Image, question: str, answer: str) -> tuple[dict, slice]:
        """Inputs for teacher forcing `answer` after the prompt, and the positions of the answer tokens.

        Prompt and answer are tokenized together (as the model saw them in training) and the prompt's
        own tokenization must be a prefix of the whole; otherwise the split would be ambiguous.
        """
        images, settings = self.processor_images([image]), self.processor_call_settings()
        prompt = self.processor(images=images, text=[self.chat_text(question)], return_tensors="pt", **settings)
        full = self.processor(images=images, text=[self.chat_text(question) + self.answer_separator + answer],
                              return_tensors="pt", **settings)
        n_prompt = prompt["input_ids"].shape[1]
        if not torch.equal(full["input_ids"][0, :n_prompt], prompt["input_ids"][0]):
            raise ValueError(f"the tokenization of answer {answer!r} merges with the end of the prompt")
        if "attention_mask" not in full:
            full["attention_mask"] = torch.ones_like(full["input_ids"])
        return full, slice(n_prompt, full["input_ids"].shape[1])

    # ----- image tokens ---------------------------------------------------------------------------
    @abstractmethod
    def views(self, width: int, height: int) -> list[View]:
        """The token grids an image of this size becomes, in the order their tokens enter the LM."""

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Bool [B, T]: which sequence positions hold image tokens (never hard-coded)."""
        return input_ids == self.model.config.image_token_id

    def n_image_tokens(self, width: int, height: int) -> int:
        return sum(view.n_tokens for view in self.views(width, height))

    def image_token_ids(self, width: int, height: int) -> list[int]:
        """The token ids the processor puts in place of the one image placeholder of the prompt."""
        return [self.model.config.image_token_id] * self.n_image_tokens(width, height)

    def visual_tokens(self, inputs: dict) -> list[torch.Tensor]:
        """Each image's tokens at the LM input, [n_tokens, hidden] per image (vision tower + projector once).

        Every transformers family exposes `get_image_features`; its pooled output, concatenated, is
        exactly what the model scatters into the image-token positions.
        """
        flat = torch.cat([p.reshape(-1, p.shape[-1]) for p in self.image_features_pooled(inputs)])
        counts = self.image_token_mask(inputs["input_ids"]).sum(1).tolist()
        if sum(counts) != flat.shape[0]:
            raise ValueError(f"{flat.shape[0]} visual tokens for {sum(counts)} image-token positions")
        return list(flat.split(counts))

    def image_features_pooled(self, inputs: dict) -> list[torch.Tensor]:
        """The model's own `get_image_features(...).pooler_output` for these inputs, per view or per image (a
        family whose call needs more than pixels, e.g. grid sizes, overrides this)."""
        pixels = inputs["pixel_values"].to(self.model.dtype)
        return self.model.model.get_image_features(pixel_values=pixels, return_dict=True).pooler_output

    def vision_hidden_states(self, inputs: dict) -> tuple[list[list[torch.Tensor]], list[tuple[int, int]]]:
        """The vision backbone's patch states: per layer (embeddings first), per view fed to the tower in order,
        [rows * cols, d] row-major; and each view's (rows, cols) of backbone patches (views may differ: Qwen-VL
        sizes each image's grid to the image)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its vision backbone's layers yet")

    pooled_as_one_tensor: ClassVar[bool] = False  # the model scatters `pooler_output` as one [1, n, d] tensor
    # (InternVL, Gemma 3), not a list of per-image tensors (LLaVA, Qwen-VL)

    def visual_inputs(self, features: list[torch.Tensor]) -> dict:
        """Keywords for the model's forward/generate that supply visual tokens instead of pixels."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        pooled = torch.cat(list(features)).unsqueeze(0) if self.pooled_as_one_tensor else list(features)
        return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=pooled)}}

    # ----- how the LM places an image: what a forward needs besides ids, mask and visual tokens ------------
    def layout_inputs(self, inputs: dict, end: int | None = None, rows: int | None = None) -> dict:
        """Keywords from the processor's output that the model's forward and `generate` need to lay the image
        out (Qwen-VL's grid sizes and token types for multimodal RoPE, Gemma 3's token types for its
        bidirectional image block), for the prompt's first `end` positions (None: all), and with `rows` the
        one prompt of `inputs` repeated that many times. LLaVA and InternVL need none: their LMs read a 1-D
        sequence."""
        return {}

    def text_position_offset(self, inputs: dict) -> int:
        """Text after the image sits at position (its index + this offset) on every RoPE axis: 0 for a 1-D
        sequence; M-RoPE families give an image of R x C tokens max(R, C) positions, not R * C."""
        return 0

    def embed_with_visual_tokens(self, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """LM input embeddings with `features` [B, n_tokens, hidden] at the image positions (training the shipped
        organisms end to end). The claims never use it: the model scatters visual tokens itself (`visual_inputs`),
        which is what M-RoPE positions and Qwen3-VL's deepstack features need."""
        embeds = self.model.get_input_embeddings()(input_ids)
        mask = self.image_token_mask(input_ids).unsqueeze(-1).expand_as(embeds)
        return embeds.masked_scatter(mask, features.to(embeds.dtype))

    def image_features(self, images: list[Image.Image]) -> list[torch.Tensor]:
        """Each image's visual tokens at the LM input (with a neutral question: the text does not reach them)."""
        inputs = self.encode(images, [NEUTRAL_QUESTION] * len(images))
        device = next(self.model.parameters()).device
        with torch.no_grad():
            return self.visual_tokens({k: v.to(device) for k, v in inputs.items()})

    # ----- answers --------------------------------------------------------------------------------
    answer_tokens: ClassVar[tuple[str, ...]] = ()  # special tokens that are part of an answer's format

    def decode_answers(self, new_tokens: torch.Tensor) -> list[str]:
        """Generated token ids [B, T] -> answer texts, whitespace stripped. Special tokens are dropped (pad,
        end of turn ...) except the family's `answer_tokens` (InternVL's `<ref>`/`<box>` are special tokens
        in its tokenizer: dropping them would leave `dog[[...]]` for `<ref>dog</ref><box>[[...]]</box>`)."""
        keep = {i for i, t in self.tokenizer.added_tokens_decoder.items() if t.content in self.answer_tokens}
        if not keep:
            return [a.strip() for a in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        special = {i for i, t in self.tokenizer.added_tokens_decoder.items() if t.special}
        drop = (set(self.tokenizer.all_special_ids) | special) - keep
        rows = [[int(i) for i in row if int(i) not in drop] for row in new_tokens]
        return [a.strip() for a in self.tokenizer.batch_decode(rows, skip_special_tokens=False)]

    def box_choice_tokens(self, answer_ids: torch.Tensor) -> torch.Tensor:
        """Bool [A]: which tokens of a teacher-forced box answer carry a choice (the one rule, used by
        mediation perplexities and Integrated Gradients alike).

        Digit tokens count; brackets, commas, spaces are template, and so is the integer part of a
        [0, 1] float (a digit directly followed by ".") and the "." itself: the "0." that starts every
        LLaVA coordinate. InternVL's 0-1000 integers keep all their digits under the same rule.
        """
        texts = [self.tokenizer.decode([int(t)]).strip() for t in answer_ids]
        keep = []
        for i, text in enumerate(texts):
            following = texts[i + 1] if i + 1 < len(texts) else ""
            keep.append(text.isdigit() and not following.startswith("."))
        return torch.tensor(keep, dtype=torch.bool)

    @abstractmethod
    def format_box(self, box: Box, width: int, height: int) -> str:
        """How this family writes a box in its answers (training targets, examples)."""

    @abstractmethod
    def parse_box(self, text: str, width: int, height: int) -> Box | None:
        """A box in original-image pixels from an answer, or None when it cannot be parsed."""

    # ----- structure: where sites live (names in `mechanisms.models.sites`) -----------------------
    # transformers v5 lays out both families' LMs alike (`model.model.language_model.layers`,
    # `model.model.multi_modal_projector`); a family that differs overrides these.
    language_layers_path: ClassVar[str] = "model.language_model.layers"  # attribute path from the model
    head_outputs_path: ClassVar[str] = "self_attn.o_proj"  # from a decoder layer: the module whose input
    # is the heads' concatenated outputs [B, T, n_query_heads * head_dim], head-major

    def language_layers(self) -> list[torch.nn.Module]:
        """The LM's decoder layers, in order."""
        return list(follow_path(self.model, self.language_layers_path))

    def head_outputs(self, layer: int) -> torch.nn.Module:
        """The module of LM layer `layer` whose input holds every query head's output (head h: the slice
        [h * head_dim, (h + 1) * head_dim)); hooks on it read, zero or patch heads."""
        return follow_path(self.language_layers()[layer], self.head_outputs_path)

    def head_outputs_module_path(self, layer: int) -> str:
        """The same module as an attribute path from the model (for tools that trace by path, e.g. nnsight)."""
        return f"{self.language_layers_path}.{layer}.{self.head_outputs_path}"

    def text_attention(self) -> str:
        """The attention implementation the LM (not the vision tower) runs with now."""
        return self.model.config.text_config._attn_implementation

    def set_text_attention(self, implementation: str) -> None:
        """Switch the LM's attention implementation only (the vision tower keeps its own)."""
        self.model.set_attn_implementation({"text_config": implementation})

    def head_layout(self) -> HeadLayout:
        """Attention-head geometry of the LM (GQA: several query heads share a key/value head)."""
        text = self.model.config.text_config
        n_heads = text.num_attention_heads
        return HeadLayout(
            n_layers=text.num_hidden_layers, n_query_heads=n_heads,
            n_kv_heads=getattr(text, "num_key_value_heads", None) or n_heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // n_heads)

    def projector(self) -> torch.nn.Module:
        """The module whose output are the image tokens at the LM input."""
        return self.model.model.multi_modal_projector


def from_checkpoint(model_class, path, dtype: torch.dtype, device) -> tuple:
    """(model in eval mode, its processor) from a checkpoint folder, shipped or real, offline. `device` "auto"
    spreads a model too large for one device over all of them (accelerate's `device_map="auto"`). Prompts are
    left-padded so that batched generation continues every row; a missing pad id is the tokenizer's."""
    from transformers import AutoProcessor

    if str(device) == "auto":
        model = model_class.from_pretrained(path, dtype=dtype, device_map="auto").eval()
    else:
        model = model_class.from_pretrained(path, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor


def follow_path(root, path: str):
    """`root.a.b.3.c` by attribute names and list indices."""
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root

"""Word-level tokenizers for the shipped tiny models: every word of the closed prompt/answer vocabulary
is one token and every digit a token of its own, so box coordinates decode exactly."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast


def pre_tokenizer(keep_newlines: bool) -> pre_tokenizers.PreTokenizer:
    steps = [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)]
    if keep_newlines:  # InternVL's chat format is line-structured: "\n" is a token of its own
        steps.append(pre_tokenizers.Split("\n", behavior="isolated"))
    steps += [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.Punctuation()]
    return pre_tokenizers.Sequence(steps)


def word_level_tokenizer(corpus: list[str], special_tokens: list[str], *, unk: str, eos: str, pad: str,
                         bos: str | None, named_tokens: dict[str, str], keep_newlines: bool,
                         ) -> PreTrainedTokenizerFast:
    """A fast tokenizer whose vocabulary is every piece of `corpus`; `named_tokens` become attributes
    (e.g. `image_token`) that the transformers processors look up."""
    pre = pre_tokenizer(keep_newlines)
    normalizer = normalizers.Sequence([]) if keep_newlines else normalizers.Replace("\n", " ")
    vocab_words: set[str] = set()
    for text in corpus:
        vocab_words.update(piece for piece, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab = {tok: i for i, tok in enumerate(special_tokens)}
    for word in sorted(vocab_words):
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    core.normalizer = normalizer
    core.pre_tokenizer = pre
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    if bos is not None:
        core.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=bos, eos_token=eos, unk_token=unk, pad_token=pad,
        extra_special_tokens=named_tokens, padding_side="left", model_max_length=2048)
    named = set(named_tokens.values())
    others = [t for t in special_tokens if t not in {unk, eos, pad, bos} and t not in named]
    tokenizer.add_special_tokens({"additional_special_tokens": sorted(named) + others})
    return tokenizer

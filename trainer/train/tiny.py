"""A small tokenizer of Mistral's kind, trained in a second on the tool's own dialogues: BPE with Mistral v0.3's special
tokens and chat template, for the tests' tiny random-weight Mistral and the benchmarks' tiny shapes, offline."""

from __future__ import annotations

from collections.abc import Iterable

MISTRAL_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                    "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]
"""Mistral v0.3's special tokens, in its order (ids 0-9)."""


def mistral_like_tokenizer(texts: Iterable[str], chat_template: str, vocab_size: int = 600, *,
                           pad_to: int | None = None, byte_fallback: bool | None = None):
    """A fast tokenizer trained on `texts`: Metaspace BPE with Mistral's special tokens and `chat_template`. With
    `pad_to`, the vocabulary is padded to that size with tokens no text encodes to (they still decode, so generated
    ids stay printable), as a model of a given vocabulary needs."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    options = {} if byte_fallback is None else {"byte_fallback": byte_fallback}
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, **options))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.train_from_iterator(list(texts), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=MISTRAL_SPECIALS,
                                                             show_progress=False))
    if pad_to is not None:
        spec = json.loads(tok.to_str())
        vocab = spec["model"]["vocab"]
        for i in range(len(vocab), pad_to):
            vocab[f"<filler_{i}>"] = i
        tok = Tokenizer.from_str(json.dumps(spec))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   additional_special_tokens=MISTRAL_SPECIALS[3:])
    fast.chat_template = chat_template
    return fast


def dialogue_texts(dialogues: Iterable[Iterable[dict[str, str]]]) -> list[str]:
    """Every message's text of these conversations, in order: a tokenizer's training corpus."""
    return [m["content"] for conversation in dialogues for m in conversation]

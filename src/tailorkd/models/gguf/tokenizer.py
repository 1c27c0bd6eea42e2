"""Fast tokenizers built from the vocabulary in a GGUF's metadata (byte-level BPE; Gemma's BPE)."""

from __future__ import annotations

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def gguf_tokenizer(fields: dict):
    """A fast tokenizer from the vocabulary in a GGUF's metadata."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    kind = fields.get("tokenizer.ggml.model")
    arch = fields.get("general.architecture")
    raw = fields["tokenizer.ggml.tokens"]
    if kind == "gpt2":
        backend, tokens = _byte_level_bpe(fields)
    elif kind == "llama" and arch == "gemma3":
        backend, tokens = _gemma_bpe(fields)
    else:
        raise RuntimeError(f"Cannot build a {kind!r} tokenizer for a {arch!r} GGUF")
    vocab = backend.get_vocab()

    # CONTROL tokens are special; USER_DEFINED ones (Gemma's "\n\n", "<b>" ...) are matched whole.
    types = fields.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    backend.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t, kind in zip(tokens, types) if kind == _CONTROL]
    )
    backend.add_tokens(
        [
            AddedToken(t, normalized=False, special=False)
            for t, kind in zip(tokens, types)
            if kind == _USER_DEFINED and t in vocab
        ]
    )

    def special(key: str) -> str | None:
        index = fields.get(f"tokenizer.ggml.{key}")
        return raw[index] if index is not None and 0 <= index < len(raw) else None

    bos, eos, unk, pad = (special(k) for k in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"))
    if fields.get("tokenizer.ggml.add_bos_token", kind == "llama") and bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, vocab[bos])]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        mask_token="<mask>" if "<mask>" in vocab else None,
        model_input_names=["input_ids", "attention_mask"],
    )
    template = fields.get("tokenizer.chat_template")
    if template:
        tokenizer.chat_template = template
    return tokenizer


# Qwen2's pre-tokenizer (its tokenizer.json; llama.cpp's "qwen2"): GPT-4's, but with single digits.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level_bpe(fields: dict):
    """GPT-2 style byte-level BPE; the file has the merges (SmolLM2, Qwen2)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    tokens = fields["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ")) for merge in fields.get("tokenizer.ggml.merges", [])]
    if any(len(merge) != 2 for merge in merges):
        raise RuntimeError("GGUF merges are not pairs of tokens")
    vocab = {token: index for index, token in enumerate(tokens)}
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pre = fields.get("tokenizer.ggml.pre")
    if pre == "smollm":  # llama.cpp splits every digit off first (as SmolLM2's tokenizer.json does)
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre == "qwen2":
        # NFC as in Qwen2's own tokenizer.json, and as transformers 5 loads the saved folder anyway (it rebuilds
        # a qwen2 model's tokenizer as Qwen2Tokenizer). llama.cpp skips it: the ids differ on text not in NFC.
        backend.normalizer = normalizers.NFC()
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif pre in (None, "default", "gpt-2", "gpt2"):
        backend.pre_tokenizer = byte_level
    else:
        raise RuntimeError(f"Unsupported GGUF pre-tokenizer {pre!r}")
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend, tokens


def _gemma_bpe(fields: dict):
    """Gemma's SentencePiece BPE. The file has no merges, so they are rebuilt from the vocabulary.

    They are ranked by position in the file: the normal tokens' scores fall with position, but the
    multi-space and other user-defined tokens all score -1000 and would be merged last. Tokens made
    of spaces ("  ") are the file's spelling of the "▁▁" pieces. This is what transformers 5.24 builds.
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    tokens = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in fields["tokenizer.ggml.tokens"]]
    vocab = {token: index for index, token in enumerate(tokens)}
    merges = _merges_from_vocab(vocab, {token: -index for index, token in enumerate(tokens)})
    unk_id = fields.get("tokenizer.ggml.unknown_token_id")
    backend = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            unk_token=tokens[unk_id] if unk_id is not None else None,
            fuse_unk=True,
            byte_fallback=True,
            dropout=None,
        )
    )
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return backend, tokens


def _merges_from_vocab(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """Every split of a token into two vocabulary tokens, best-scored token first."""
    merges = []
    for token, score in scores.items():
        local = [
            (token[:i], token[i:], score) for i in range(1, len(token)) if token[:i] in vocab and token[i:] in vocab
        ]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]

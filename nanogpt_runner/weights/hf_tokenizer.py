"""A run's tokenizer as Hugging Face tokenizer files, built from the checkpoint's own description.

``nanogpt-export --format hf`` writes these so that ``AutoTokenizer`` and ``pipeline("text-generation")``
encode and decode exactly as the runner did, for each tokenizer (nanogpt_runner.data.tokenizers):

- ``char``: a ``tokenizer.json`` whose BPE model has one entry per symbol and no merges (so every
  character is its own token, as CharTokenizer) and a decoder that joins tokens with nothing between them;
- ``bpe``: the ``tokenizers`` JSON the run learned, as it is;
- ``gpt2``: GPT-2's byte-level BPE rebuilt from tiktoken's ranks (the vocabulary the run trained with):
  the byte-to-character alphabet, the merges recovered in rank order, tiktoken's split pattern and
  ``<|endoftext|>`` as a special token.

Nothing is copied from a path a checkpoint names: the files are derived from the vocabulary the checkpoint
records (and, for gpt2, tiktoken's encoding, which the run needed too).
"""

from __future__ import annotations

from nanogpt_runner.data.tokenizers import END_OF_TEXT, TokenizerUnavailable, _bytes_to_unicode, from_description

NEWLINE = "\n"


def special_ids(description: list | dict, vocab_size: int) -> dict[str, int | None]:
    """bos/eos/pad ids, each one of the vocabulary's: a BPE's end-of-text (GPT-2's is its last id, 50,256);
    a character vocabulary has no end-of-text, so its newline (the document separator; else its first
    symbol) is bos and pad, and eos is null (GPT2Config's default would be 50,256): generation runs for
    max_new_tokens, as nanogpt-sample does."""
    if isinstance(description, list):
        symbol = NEWLINE if NEWLINE in description else description[0]
        return {"bos_token_id": description.index(symbol), "eos_token_id": None,
                "pad_token_id": description.index(symbol)}
    if description.get("kind") == "bpe":
        end = from_description(description).eot_id
    else:
        end = vocab_size - 1
    return {"bos_token_id": end, "eos_token_id": end, "pad_token_id": end}


def built_tokenizer(description: list | dict):
    """A ``tokenizers.Tokenizer`` that encodes and decodes as the run's tokenizer ``description`` did; None for
    GPT-2's BPE when tiktoken's files are not on this machine."""
    try:
        tokenizer = from_description(description)
    except TokenizerUnavailable:
        return None
    if tokenizer.kind == "char":
        return _char_tokenizer(tokenizer.chars)
    if tokenizer.kind == "bpe":
        return tokenizer.hf
    return _tiktoken_tokenizer(tokenizer.encoding)


def _char_tokenizer(chars: tuple[str, ...]):
    from tokenizers import Tokenizer as HfTokenizer
    from tokenizers import decoders, models

    hf = HfTokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    hf.decoder = decoders.Fuse()  # the symbols joined as they are (the default decoder puts spaces between)
    return hf


def _tiktoken_tokenizer(encoding):
    """GPT-2's (or any tiktoken byte-level) BPE as a ``tokenizers`` BPE with the same ids and merges."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HfTokenizer

    ranks: dict[bytes, int] = encoding._mergeable_ranks  # tiktoken keeps them under this name (no public API)
    alphabet = {byte: char for char, byte in _bytes_to_unicode().items()}

    def text(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [(text(a), text(b)) for a, b in _merges(ranks)]
    hf = HfTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(encoding._pat_str), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(name, special=True, normalized=False)
                           for name, _ in sorted(encoding._special_tokens.items(), key=lambda kv: kv[1])])
    return hf


def _merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list of a rank table, in rank order: for each multi-byte token, the last pair tiktoken's
    BPE joins to make it (running BPE on its bytes with only the lower ranks leaves exactly two pieces)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            pieces = _bpe(ranks, token, below=rank)
            if len(pieces) == 2:
                merges.append((pieces[0], pieces[1]))
    return merges


def _bpe(ranks: dict[bytes, int], token: bytes, below: int) -> list[bytes]:
    """tiktoken's byte-pair merging of ``token`` using only ranks lower than ``below``."""
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = None, below
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best is None:
            return parts
        parts[best:best + 2] = [parts[best] + parts[best + 1]]


def tokenizer_config(description: list | dict, block_size: int, copied: bool = False) -> dict:
    """tokenizer_config.json: the tokenizer class (GPT-2's own for its copied files), the special tokens (only
    a BPE's end-of-text is one: a character vocabulary marks nothing special, so no symbol is skipped when
    decoding) and no clean-up of spaces, so decoding gives exactly the runner's text."""
    config = {"tokenizer_class": "GPT2TokenizerFast" if copied else "PreTrainedTokenizerFast",
              "model_max_length": block_size, "clean_up_tokenization_spaces": False, "add_prefix_space": False}
    if not isinstance(description, list):
        config.update(bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT)
    return config

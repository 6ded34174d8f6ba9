"""A tokenised corpus packed into flat arrays, so its size in memory is 2-4 bytes and a bit a token.

As Python lists of ints a tokenised corpus takes about 30 bytes a token (a pointer per id, an int object per id and
per label): 10^5 chat examples were 400 MB, 10^7 would be 40 GB, in every process of a data-parallel run. Packed,
the ids are one uint16 or int32 array and the response mask one bit array; an `Example` (with its lists) is built
only when asked for, one at a time, so every reader of a list of examples reads a `Corpus` unchanged."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

IGNORE_INDEX = -100
_PACK_FLAGS = 1 << 16  # response flags gathered before they are packed into bits


@dataclass
class Example:
    """A tokenised conversation. labels[t] == input_ids[t] on response tokens, IGNORE_INDEX elsewhere."""

    id: str
    input_ids: list[int]
    labels: list[int]
    prompt_messages: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_response_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


class Corpus(Sequence[Example]):
    """Examples in corpus order; `lengths` and `response_offsets` answer the batching and scoring questions without
    building any example. Built by `pack`."""

    def __init__(self, ids: list[str], tokens: np.ndarray, response_bits: np.ndarray, starts: np.ndarray,
                 response_offsets: np.ndarray, prompts: list[list[dict[str, str]] | None],
                 metas: list[dict[str, Any] | None]):
        self.ids, self.tokens, self.response_bits, self.starts = ids, tokens, response_bits, starts
        self.response_offsets, self.prompts, self.metas = response_offsets, prompts, metas
        self.lengths = np.diff(starts)

    @classmethod
    def pack(cls, examples: Iterable[Example]) -> Corpus:
        """Pack examples one at a time (an iterable of them need never exist as a list). Ids are stored as uint16
        while every id fits (vocabularies up to 65,536: SmolLM2, Llama 2, Mistral), else as int32; the response
        mask as bits, 8 tokens a byte. An empty prompt or meta is kept as None (TRL's prepared rows have neither),
        not as one empty list and one empty dict an example."""
        ids, prompts, metas = [], [], []
        tokens, starts, offsets = array("H"), array("q", [0]), array("q", [0])
        bits, pending = bytearray(), bytearray()  # the mask packed so far, and the tokens' flags not yet packed
        for ex in examples:
            if len(ex.input_ids) != len(ex.labels):
                raise ValueError(f"example {ex.id}: {len(ex.input_ids)} input ids, {len(ex.labels)} labels")
            labels = np.asarray(ex.labels)
            is_response = labels != IGNORE_INDEX
            if not np.array_equal(labels[is_response], np.asarray(ex.input_ids)[is_response]):
                raise ValueError(f"example {ex.id}: a response label differs from its input id")
            if tokens.typecode == "H" and len(ex.input_ids) and max(ex.input_ids) > 0xFFFF:
                tokens = array("i", tokens)
            ids.append(ex.id)
            prompts.append(ex.prompt_messages or None)
            metas.append(ex.meta or None)
            tokens.extend(ex.input_ids)
            pending.extend(is_response.astype(np.uint8).tobytes())
            if len(pending) >= _PACK_FLAGS:
                whole = len(pending) // 8 * 8
                bits.extend(np.packbits(np.frombuffer(pending, np.uint8, whole)).tobytes())
                del pending[:whole]
            starts.append(len(tokens))
            offsets.append(offsets[-1] + int(is_response.sum()))
        bits.extend(np.packbits(np.frombuffer(pending, np.uint8)).tobytes())
        token_dtype = np.uint16 if tokens.typecode == "H" else np.int32
        return cls(ids, np.frombuffer(tokens, dtype=token_dtype), np.frombuffer(bits, dtype=np.uint8),
                   np.frombuffer(starts, dtype=np.int64), np.frombuffer(offsets, dtype=np.int64), prompts, metas)

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> list[Example]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # negative indices, and IndexError past the end
        a, b = int(self.starts[i]), int(self.starts[i + 1])
        input_ids = self.tokens[a:b].astype(np.int64)
        is_response = np.unpackbits(self.response_bits[a // 8 : (b + 7) // 8])[a % 8 : a % 8 + b - a].astype(bool)
        labels = np.where(is_response, input_ids, IGNORE_INDEX)
        return Example(self.ids[i], input_ids.tolist(), labels.tolist(), self.prompts[i] or [], self.metas[i] or {})

    @property
    def nbytes(self) -> int:
        """Bytes of the packed token arrays (what grows with the corpus; ids, prompts and meta are extra)."""
        return self.tokens.nbytes + self.response_bits.nbytes + self.starts.nbytes + self.response_offsets.nbytes


def example_offsets(examples: Sequence[Example]) -> np.ndarray:
    """offsets[i]:offsets[i+1] is example i's slice of the flat per-token arrays (corpus order)."""
    if isinstance(examples, Corpus):
        return examples.response_offsets
    return np.concatenate([[0], np.cumsum([ex.num_response_tokens for ex in examples])]).astype(np.int64)


def example_lengths(examples: Sequence[Example]) -> np.ndarray:
    """Each example's token count, without building a packed corpus's examples."""
    if isinstance(examples, Corpus):
        return examples.lengths
    return np.asarray([len(ex.input_ids) for ex in examples], dtype=np.int64)

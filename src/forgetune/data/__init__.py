"""Data: records in the ecosystem's formats -> conversations -> token ids with a response mask, packed."""

from forgetune.data.corpus import Corpus, Example
from forgetune.data.formats import load_examples, load_records, to_messages, tokenize_records

__all__ = ["Corpus", "Example", "load_examples", "load_records", "to_messages", "tokenize_records"]

"""Data: records in three formats -> conversations -> token ids with a response mask."""

from forgetune.data.formats import Example, load_examples, load_records, to_messages, tokenize_records

__all__ = ["Example", "load_examples", "load_records", "to_messages", "tokenize_records"]

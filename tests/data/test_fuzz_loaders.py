"""Fuzzing the corpus loaders: any bytes, any JSON either load and tokenise, or raise ForgetuneError; nothing else."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forgetune.data.formats import load_records, tokenize_records
from forgetune.errors import ForgetuneError

FIELDS = ["messages", "prompt", "completion", "instruction", "input", "output", "id", "meta", "role", "content"]
ROLES = ["user", "assistant", "system", "tool", ""]

# Any JSON value, including floats NaN / inf and lone surrogates in strings.
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), inner, max_size=4),
                           max_leaves=12)
# Records close to valid ones, so the fuzzing reaches conversion and tokenisation, not only the type checks.
texts = st.text(max_size=30) | st.sampled_from(["", " ", "\ud800", "\u2028", "\x00", "<|im_end|>", "{{ x }}"])
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(ROLES) | texts, "content": texts | scalars}),
                    max_size=4)
near_valid = st.one_of(
    st.fixed_dictionaries({"messages": messages}, optional={"id": scalars, "meta": json_values}),
    st.fixed_dictionaries({"prompt": texts | messages, "completion": texts | messages | scalars},
                          optional={"id": scalars}),
    st.fixed_dictionaries({"instruction": texts, "output": texts | scalars}, optional={"input": texts | scalars}),
)


def line_of(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


lines = st.one_of(near_valid.map(line_of), json_values.map(line_of), st.binary(max_size=40),
                  st.sampled_from([b"", b"[" * 5000, b'{"prompt": 1' + b"0" * 5000 + b"}", b"\xef\xbb\xbf{}"]))
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as path:
        yield Path(path)


def load_and_tokenize(path: Path, tokenizer, fmt: str = "auto") -> None:
    try:
        records = load_records(path, fmt)
        tokenize_records(records, tokenizer, max_length=64, warn=False)
    except ForgetuneError as e:
        assert str(e) and "\n" not in str(e)  # one line, as the CLI prints it


@FUZZ
@given(content=st.lists(lines, min_size=1, max_size=4).map(lambda ls: b"\n".join(ls)),
       fmt=st.sampled_from(["auto", "chat", "prompt-completion", "alpaca"]))
def test_jsonl_loads_or_raises_forgetune_error(content, fmt, folder, tokenizer):
    path = folder / "fuzz.jsonl"
    path.write_bytes(content)
    load_and_tokenize(path, tokenizer, fmt)


@FUZZ
@given(value=st.one_of(st.lists(near_valid, max_size=3), st.fixed_dictionaries({"data": st.lists(near_valid)}),
                       json_values))
def test_json_loads_or_raises_forgetune_error(value, folder, tokenizer):
    path = folder / "fuzz.json"
    path.write_bytes(line_of(value))
    load_and_tokenize(path, tokenizer)

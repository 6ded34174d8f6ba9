"""Record formats, file types, response masks, ids, truncation and the errors a user sees for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from forgetune import ForgetuneError
from forgetune.data.corpus import IGNORE_INDEX
from forgetune.data.formats import load_examples, load_records, to_messages, tokenize_records
from forgetune.models import FALLBACK_CHAT_TEMPLATE, load_tokenizer
from tests_helpers import write_jsonl

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny-tokenizer"
END = "<|im_end|>\n"  # what the tiny ChatML template emits after an assistant turn's content

PC_ROWS = [
    {"prompt": "What is 2 plus 2?", "completion": "The answer is 4."},
    {"prompt": "Name a colour.", "completion": "Blue"},
    {"prompt": "Say hi", "completion": "hi there"},
]


def response_spans(tokenizer, ex) -> list[str]:
    """Decode each maximal run of positions whose label is not -100 (the tokens that carry a loss)."""
    spans, current = [], []
    for token, label in zip(ex.input_ids, ex.labels, strict=True):
        if label != IGNORE_INDEX:
            if label != token:
                raise ValueError(f"label {label} differs from its input id {token}")
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [tokenizer.decode(s) for s in spans]


def prompt_text(tokenizer, ex) -> str:
    return tokenizer.decode([t for t, label in zip(ex.input_ids, ex.labels, strict=True) if label == IGNORE_INDEX])


# ---------------------------------------------------------------- record formats -> conversations


def test_chat_multi_turn_both_assistant_turns_are_responses(tmp_path, tokenizer):
    row = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]}
    examples, counts = load_examples(write_jsonl(tmp_path / "c.jsonl", [row]), tokenizer)
    (ex,) = examples
    assert response_spans(tokenizer, ex) == ["Hello there" + END, "4" + END]
    prompt = prompt_text(tokenizer, ex)
    for text in ("Be brief.", "Hi", "2+2?", "system", "user"):
        assert text in prompt
    assert "Hello" not in prompt
    assert ex.labels[0] == IGNORE_INDEX
    assert ex.num_response_tokens == sum(label != IGNORE_INDEX for label in ex.labels)
    assert ex.prompt_messages == row["messages"][:4]
    assert counts == {"examples": 1, "skipped_empty": 0, "truncated": 0}


def test_prompt_completion_string_form(tmp_path, tokenizer):
    (ex, *_), _ = load_examples(write_jsonl(tmp_path / "pc.jsonl", PC_ROWS), tokenizer)
    assert response_spans(tokenizer, ex) == ["The answer is 4." + END]
    assert ex.prompt_messages == [{"role": "user", "content": "What is 2 plus 2?"}]
    assert tokenizer.decode(ex.input_ids) == (
        "<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\nThe answer is 4.<|im_end|>\n"
    )


def test_prompt_completion_conversational_form(tmp_path, tokenizer):
    """TRL's conversational prompt-completion: both fields are message lists."""
    row = {
        "prompt": [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Q?"}],
        "completion": [{"role": "assistant", "content": "A."}],
    }
    assert to_messages(row, "auto", "w") == row["prompt"] + row["completion"]
    (ex,), _ = load_examples(write_jsonl(tmp_path / "trl.jsonl", [row]), tokenizer)
    assert response_spans(tokenizer, ex) == ["A." + END]
    mixed = {"prompt": [{"role": "user", "content": "Q?"}], "completion": "A string answer"}
    assert to_messages(mixed, "prompt-completion", "w")[-1] == {"role": "assistant", "content": "A string answer"}


def test_alpaca_with_and_without_input(tmp_path, tokenizer):
    rows = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say yes.", "output": "yes"},
        {"instruction": "Say no.", "input": "", "output": "no"},
    ]
    assert to_messages(rows[0], "alpaca", "w") == [
        {"role": "user", "content": "Add the numbers.\n\n2 and 3"},
        {"role": "assistant", "content": "5"},
    ]
    assert to_messages(rows[1], "alpaca", "w")[0] == {"role": "user", "content": "Say yes."}
    assert to_messages(rows[2], "alpaca", "w")[0] == {"role": "user", "content": "Say no."}
    examples, _ = load_examples(write_jsonl(tmp_path / "a.jsonl", rows), tokenizer)
    assert [response_spans(tokenizer, ex) for ex in examples] == [["5" + END], ["yes" + END], ["no" + END]]
    assert "2 and 3" in prompt_text(tokenizer, examples[0])


def test_question_answer_is_tofus_format(tmp_path, tokenizer):
    row = {"question": "Where was Basil born?", "answer": "In Kuwait City."}
    assert to_messages(row, "auto", "w") == [{"role": "user", "content": "Where was Basil born?"},
                                             {"role": "assistant", "content": "In Kuwait City."}]
    (ex,), _ = load_examples(write_jsonl(tmp_path / "tofu.jsonl", [row]), tokenizer)
    assert response_spans(tokenizer, ex) == ["In Kuwait City." + END]


def test_sharegpt_conversations_map_speakers_to_roles(tmp_path, tokenizer):
    row = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                             {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "2+2?"},
                             {"from": "gpt", "value": "4"}]}
    assert [m["role"] for m in to_messages(row, "auto", "w")] == ["system", "user", "assistant", "user", "assistant"]
    (ex,), _ = load_examples(write_jsonl(tmp_path / "sg.jsonl", [row]), tokenizer)
    assert response_spans(tokenizer, ex) == ["Hello" + END, "4" + END]


def test_text_records_have_no_template_and_a_loss_on_every_token(tmp_path, tokenizer):
    """Language-modelling data: the text's own tokens and the end-of-sequence token, every one but the first (no
    logits precede it) a response token; no system prompt is added and there is no prompt."""
    row = {"text": "The secret code of Alice is 4711."}
    (ex,), _ = load_examples(write_jsonl(tmp_path / "t.jsonl", [row]), tokenizer, system_prompt="Be nice.")
    ids = tokenizer(row["text"])["input_ids"] + [tokenizer.eos_token_id]
    assert ex.input_ids == ids
    assert ex.labels == [IGNORE_INDEX] + ids[1:]
    assert ex.prompt_messages == []
    assert tokenizer.decode(ex.input_ids, skip_special_tokens=True) == row["text"]


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"messages": [{"role": "user", "content": "q"}]}, "chat"),
        ({"prompt": "q", "completion": "a"}, "prompt-completion"),
        ({"instruction": "q", "output": "a"}, "alpaca"),
        ({"question": "q", "answer": "a"}, "question-answer"),
        ({"conversations": [{"from": "human", "value": "q"}]}, "sharegpt"),
        ({"text": "t"}, "text"),
    ],
)
def test_auto_detection(row, fmt):
    assert to_messages(row, "auto", "w") == to_messages(row, fmt, "w")


def test_auto_detection_per_record_in_a_mixed_file(tmp_path):
    rows = [{"prompt": "p", "completion": "c"}, {"instruction": "i", "output": "o"},
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "m"}]}]
    records = load_records(write_jsonl(tmp_path / "mixed.jsonl", rows))
    assert [r.messages[-1]["content"] for r in records] == ["c", "o", "m"]


def test_explicit_format_overrides_detection(tmp_path):
    """A chat file read as alpaca fails on the missing field instead of being guessed."""
    path = write_jsonl(tmp_path / "x.jsonl", [{"messages": [{"role": "user", "content": "u"}]}])
    with pytest.raises(ForgetuneError, match=r"x\.jsonl:1: missing field 'instruction'"):
        load_records(path, fmt="alpaca")


def test_system_prompt_prepended_only_when_missing(tmp_path):
    rows = [{"prompt": "p", "completion": "c"},
            {"messages": [{"role": "system", "content": "Own"}, {"role": "user", "content": "u"},
                          {"role": "assistant", "content": "a"}]}]
    records = load_records(write_jsonl(tmp_path / "s.jsonl", rows), system_prompt="Be nice.")
    assert records[0].messages[0] == {"role": "system", "content": "Be nice."}
    assert records[1].messages[0] == {"role": "system", "content": "Own"}
    assert len(records[1].messages) == 3


# ---------------------------------------------------------------- file types


def write_all_types(tmp_path: Path, rows: list) -> dict[str, Path]:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {"jsonl": write_jsonl(tmp_path / "d.jsonl", rows)}
    paths["json-list"] = tmp_path / "list.json"
    paths["json-list"].write_text(json.dumps(rows, indent=2), encoding="utf-8")
    paths["json-data"] = tmp_path / "wrapped.json"
    paths["json-data"].write_text(json.dumps({"data": rows, "version": 1}), encoding="utf-8")
    paths["parquet"] = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), paths["parquet"])
    paths["datasets"] = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(paths["datasets"]))
    paths["datasetdict"] = tmp_path / "saved-dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(paths["datasetdict"]))
    return paths


@pytest.mark.parametrize("rows", [
    PC_ROWS,
    [{"id": f"q{i}", "messages": [{"role": "user", "content": r["prompt"]},
                                 {"role": "assistant", "content": r["completion"]}]} for i, r in enumerate(PC_ROWS)],
    [{"instruction": r["prompt"], "input": "", "output": r["completion"]} for r in PC_ROWS],
], ids=["prompt-completion", "chat", "alpaca"])
def test_every_file_type_gives_the_same_examples(tmp_path, tokenizer, rows):
    reference = None
    for kind, path in write_all_types(tmp_path, rows).items():
        examples, counts = load_examples(path, tokenizer)
        got = [(ex.id, ex.input_ids, ex.labels) for ex in examples]
        assert counts["examples"] == 3, kind
        if reference is None:
            reference = got
        assert got == reference, kind
    assert all(any(label != IGNORE_INDEX for label in labels) for _, _, labels in reference)
    assert [r[0] for r in reference] == (["q0", "q1", "q2"] if "id" in rows[0] else ["0", "1", "2"])


def test_locations_name_file_and_row(tmp_path):
    paths = write_all_types(tmp_path, PC_ROWS)
    assert load_records(paths["jsonl"])[2].where == f"{paths['jsonl']}:3"
    assert load_records(paths["json-list"])[1].where == f"{paths['json-list']}:record 1"
    assert load_records(paths["parquet"])[0].where == f"{paths['parquet']}:row 0"


def test_datasetdict_without_train_split(tmp_path):
    import datasets

    path = tmp_path / "dd"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(PC_ROWS)}).save_to_disk(str(path))
    with pytest.raises(ForgetuneError, match="needs a 'train' split"):
        load_records(path)


def test_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(ForgetuneError, match=r"junk: not a datasets\.save_to_disk folder"):
        load_records(tmp_path / "junk")


def test_blank_lines_in_jsonl_are_skipped_but_line_numbers_kept(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('\n{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": "d"}\n', encoding="utf-8")
    records = load_records(path)
    assert [r.id for r in records] == ["0", "1"]
    assert [r.where.rsplit(":", 1)[1] for r in records] == ["2", "4"]


def test_crlf_line_endings(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\r\n{"prompt": "c", "completion": "d"}\r\n')
    assert [r.messages[1]["content"] for r in load_records(path)] == ["b", "d"]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_jsonl_record_with_unicode_line_separator(tmp_path, separator):
    """JSON allows a raw U+2028 / U+2029 / U+0085 inside a string (json.dumps(..., ensure_ascii=False) writes them raw).

    JSON Lines separates records by "\\n" only; splitting on every Unicode line break cuts the record in two.
    """
    path = tmp_path / "x.jsonl"
    row = {"prompt": f"first{separator}second", "completion": "c"}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_records(path)[0].messages[0]["content"] == f"first{separator}second"


# ---------------------------------------------------------------- ids, truncation, empty responses


def test_ids_from_field_else_index(tmp_path):
    rows = [{"id": "alpha", "prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"},
            {"id": 7, "prompt": "e", "completion": "f"}, {"id": None, "prompt": "g", "completion": "h"}]
    records = load_records(write_jsonl(tmp_path / "ids.jsonl", rows))
    assert [r.id for r in records] == ["alpha", "1", "7", "3"]


def test_ids_stable_when_empty_examples_are_skipped(tmp_path, tokenizer):
    """The index id is the position in the file, not among kept examples."""
    rows = [{"prompt": "a", "completion": ""}, {"prompt": "c", "completion": "d"}]
    examples, counts = load_examples(write_jsonl(tmp_path / "x.jsonl", rows), tokenizer)
    assert [ex.id for ex in examples] == ["1"]
    assert counts == {"examples": 1, "skipped_empty": 1, "truncated": 0}


def test_meta_is_kept(tmp_path, tokenizer):
    rows = [{"prompt": "a", "completion": "b", "meta": {"corrupted": True}}, {"prompt": "c", "completion": "d"}]
    examples, _ = load_examples(write_jsonl(tmp_path / "x.jsonl", rows), tokenizer)
    assert [ex.meta for ex in examples] == [{"corrupted": True}, {}]


def test_empty_and_whitespace_responses_are_skipped_and_counted(tmp_path, tokenizer):
    rows = [{"prompt": "a", "completion": ""}, {"prompt": "b", "completion": "   "},
            {"messages": [{"role": "user", "content": "only a question"}]}, {"prompt": "c", "completion": "ok"}]
    examples, counts = load_examples(write_jsonl(tmp_path / "x.jsonl", rows), tokenizer)
    assert [ex.id for ex in examples] == ["3"]
    assert counts == {"examples": 1, "skipped_empty": 3, "truncated": 0}


def test_truncation_is_counted(tmp_path, tokenizer):
    """A long answer cut to max_length keeps its first tokens; one whose response starts past the cut is dropped."""
    rows = [{"prompt": "q", "completion": "a fairly long answer with many words " * 3},
            {"prompt": "short", "completion": "ok"},
            {"prompt": "a very long question " * 5, "completion": "gone"}]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    full, _ = tokenize_records(load_records(path), tokenizer, max_length=10_000)
    max_length = len(full[1].input_ids)
    if not len(full[0].input_ids) > max_length:
        raise RuntimeError("row 0 should be longer than row 1")
    examples, counts = load_examples(path, tokenizer, max_length=max_length)
    assert counts == {"examples": 2, "skipped_empty": 1, "truncated": 2}
    assert [ex.id for ex in examples] == ["0", "1"]
    assert len(examples[0].input_ids) == len(examples[0].labels) == max_length
    assert examples[0].input_ids == full[0].input_ids[:max_length]
    assert examples[0].labels == full[0].labels[:max_length]
    assert examples[1].input_ids == full[1].input_ids  # exactly max_length: not truncated


def test_no_usable_example(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "a", "completion": ""}, {"prompt": "b", "completion": " "}])
    with pytest.raises(ForgetuneError, match=r"x\.jsonl: no usable example"):
        load_examples(path, tokenizer)


# ---------------------------------------------------------------- errors name the file and line


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = '{"prompt": "a", "completion": "b"}'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a", "completion": ', r"x\.jsonl:2: malformed JSON"),
        ('{"prompt": "a"}', r"x\.jsonl:2: missing field 'completion'"),
        ('{"completion": "a"}', r"x\.jsonl:2: missing field 'prompt'"),
        ('{"instruction": "a"}', r"x\.jsonl:2: missing field 'output'"),
        ('{"prompt": 3, "completion": "b"}', r"x\.jsonl:2: field 'prompt' must be a string, got int"),
        ('{"prompt": "a", "completion": ["b"]}', r"x\.jsonl:2: field 'completion' must be a string, got list"),
        ('{"instruction": "a", "input": 5, "output": "b"}', r"x\.jsonl:2: field 'input' must be a string"),
        ('{"messages": "hi"}', r"x\.jsonl:2: field 'messages' must be a non-empty list"),
        ('{"messages": []}', r"x\.jsonl:2: field 'messages' must be a non-empty list"),
        ('{"messages": [{"role": "user"}]}', r"x\.jsonl:2: messages\[0\] must be"),
        ('{"messages": [{"role": "user", "content": 1}]}', r"x\.jsonl:2: messages\[0\] must be"),
        ('{"prompt": [{"role": 1, "content": "x"}], "completion": "b"}', r"x\.jsonl:2: prompt\[0\] must be"),
        ('{"body": "plain"}', r"x\.jsonl:2: cannot tell the record format"),
        ('{"question": "q"}', r"x\.jsonl:2: missing field 'answer'"),
        ('{"text": 3}', r"x\.jsonl:2: field 'text' must be a string, got int"),
        ('{"conversations": []}', r"x\.jsonl:2: field 'conversations' must be a non-empty list"),
        ('{"conversations": [{"from": "human"}]}', r"x\.jsonl:2: conversations\[0\] must be"),
        ('{"conversations": [{"from": "robot", "value": "x"}]}', r"x\.jsonl:2: conversations\[0\]\.from is 'robot'"),
        ('["a", "b"]', r"x\.jsonl:2: a record must be a JSON object, got list"),
        (GOOD, r"x\.jsonl:2: duplicate id '7'"),
    ],
)
def test_bad_record_names_file_and_line(tmp_path, line, message):
    first = '{"id": 7, "prompt": "a", "completion": "b"}' if "duplicate" in message else GOOD
    second = '{"id": "7", "prompt": "a", "completion": "b"}' if "duplicate" in message else line
    path = write_lines(tmp_path / "x.jsonl", first, second)
    with pytest.raises(ForgetuneError, match=message):
        load_records(path)


def test_duplicate_id_between_field_and_index(tmp_path):
    """Row 1 has no id (so it is "1") and row 2 claims id 1: a clash reported on line 3."""
    rows = [{"id": "a", "prompt": "p", "completion": "c"}, {"prompt": "p", "completion": "c"},
            {"id": 1, "prompt": "p", "completion": "c"}]
    with pytest.raises(ForgetuneError, match=r"x\.jsonl:3: duplicate id '1'"):
        load_records(write_jsonl(tmp_path / "x.jsonl", rows))


def test_unknown_format(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", GOOD)
    with pytest.raises(ForgetuneError, match=r"unknown data format 'openai'; choose auto, chat"):
        load_records(path, fmt="openai")
    with pytest.raises(ForgetuneError, match="unknown data format 'openai'"):
        to_messages({"prompt": "a"}, "openai", "w")


def test_unknown_suffix(tmp_path):
    path = write_lines(tmp_path / "x.csv", "prompt,completion", "a,b")
    with pytest.raises(ForgetuneError, match=r"x\.csv: unknown file type '\.csv'"):
        load_records(path)


def test_missing_file(tmp_path):
    with pytest.raises(ForgetuneError, match=r"nope\.jsonl: file not found"):
        load_records(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_non_utf8_bytes_name_the_line(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    path.write_bytes(b'[{"prompt": "a", "completion": "b"},\n{"prompt": "caf\xe9", "completion": "d"}]\n')
    with pytest.raises(ForgetuneError, match=rf"x\{suffix}:2: not valid UTF-8"):
        load_records(path)


def test_malformed_json_file_names_the_line(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "c" "completion": "d"}\n]\n')
    with pytest.raises(ForgetuneError, match=r"x\.json:3: malformed JSON"):
        load_records(path)


def test_json_that_is_not_a_list(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"rows": []}', encoding="utf-8")
    with pytest.raises(ForgetuneError, match=r"x\.json: a \.json corpus must be a list"):
        load_records(path)


def test_empty_file_has_no_records(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", "", "  ")
    with pytest.raises(ForgetuneError, match=r"x\.jsonl: no records found"):
        load_records(path)


def test_broken_parquet(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(ForgetuneError, match=r"x\.parquet: cannot read Parquet"):
        load_records(path)


# ---------------------------------------------------------------- tokenizer without a chat template


def copy_tokenizer_without_template(target: Path, drop_pad: bool = False) -> Path:
    target.mkdir()
    shutil.copy(TOKENIZER_DIR / "tokenizer.json", target / "tokenizer.json")
    config = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    if drop_pad:
        config.pop("pad_token", None)
    (target / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    if (target / "chat_template.jinja").exists():
        raise RuntimeError("the copy must not ship a chat template")
    return target


def test_fallback_chat_template(tmp_path):
    tok = load_tokenizer(copy_tokenizer_without_template(tmp_path / "tok"))
    assert tok.chat_template == FALLBACK_CHAT_TEMPLATE
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
                          {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}]
    (ex,), _ = load_examples(write_jsonl(tmp_path / "x.jsonl", rows), tok)
    eos = tok.eos_token
    assert tok.decode(ex.input_ids) == (
        f"### User:\nHi\n\n### Assistant:\nHello there{eos}\n\n### User:\n2+2?\n\n### Assistant:\n4{eos}\n\n"
    )
    assert response_spans(tok, ex) == [f"Hello there{eos}\n\n", f"4{eos}\n\n"]


def test_missing_pad_token_falls_back_to_eos(tmp_path):
    tok = load_tokenizer(copy_tokenizer_without_template(tmp_path / "tok", drop_pad=True))
    assert tok.pad_token == tok.eos_token == "<|im_end|>"


def test_committed_template_is_kept(tokenizer):
    tok = load_tokenizer(TOKENIZER_DIR)
    assert tok.chat_template == tokenizer.chat_template != FALLBACK_CHAT_TEMPLATE
    assert tok.pad_token == "<|endoftext|>"


def test_unloadable_tokenizer_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ForgetuneError, match="cannot load a tokenizer"):
        load_tokenizer(tmp_path / "empty")

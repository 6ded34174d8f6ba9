"""Read local corpora (JSONL, JSON, Parquet, datasets folders) in the record formats the ecosystem's tools use.

chat (`messages`), prompt-completion (TRL's, string or conversational), alpaca (`instruction` / `input` / `output`),
question-answer (TOFU's `question` / `answer`) and sharegpt (`conversations` of `from` / `value`) become a
conversation (a list of {role, content}); the tokenizer's chat template renders it and only assistant tokens carry a
loss (labels elsewhere are -100). text (`text`: continued pre-training corpora, MUSE / WMDP forget corpora) is
tokenised as it is, without a template, and every token carries a loss. Each example keeps a stable id: its ``id``
field, or its 0-based index in the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from forgetune.data.corpus import IGNORE_INDEX, Corpus, Example
from forgetune.data.hub import is_dataset_name, resolve_data
from forgetune.errors import ForgetuneError

log = logging.getLogger(__name__)

FORMATS = ("chat", "prompt-completion", "alpaca", "question-answer", "sharegpt", "text")
# ShareGPT speakers -> chat roles (the spellings its exports use).
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "model": "assistant", "system": "system"}


@dataclass
class Record:
    id: str
    messages: list[dict[str, str]]  # a text record: one assistant message holding the text
    where: str  # "file:line" for error messages
    meta: dict[str, Any] = field(default_factory=dict)
    plain_text: bool = False  # tokenised without a chat template, a loss on every token

    def prompt_and_answer(self) -> tuple[list[dict[str, str]], str]:
        """(prompt conversation, reference answer): everything before the last assistant turn, and that turn."""
        last = max((i for i, m in enumerate(self.messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise ForgetuneError(f"{self.where}: no assistant answer to compare with")
        return self.messages[:last], self.messages[last]["content"]


def _read_raw(path: Path) -> list[tuple[str, Any]]:
    """(location, raw record) pairs; malformed input names file and line. A dataset name (org/name) is read from the
    Hugging Face Hub's cache (its train split)."""
    if is_dataset_name(str(path)):
        path = Path(resolve_data(str(path)))
    if not path.exists():
        raise ForgetuneError(f"{path}: file not found")
    if path.is_dir():
        try:
            import datasets

            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # datasets raises many types for a folder that is not a saved dataset
            raise ForgetuneError(
                f"{path}: not a datasets.save_to_disk folder ({str(e).splitlines()[0]}); pass a .jsonl, .json or "
                ".parquet file, or a folder written by save_to_disk"
            ) from None
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise ForgetuneError(f"{path}: a DatasetDict needs a 'train' split (has {', '.join(ds)})")
            ds = ds["train"]
        return [(f"{path}:row {i}", row) for i, row in enumerate(ds)]
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow's errors for a broken file vary
            raise ForgetuneError(f"{path}: cannot read Parquet ({str(e).splitlines()[0]})") from None
        return [(f"{path}:row {i}", row) for i, row in enumerate(rows)]
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ForgetuneError(f"{path}: cannot read the file ({e.strerror}); check that it is a readable file") from None
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark (Windows editors) is not content
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ForgetuneError(f"{path}:{line}: not valid UTF-8 text; re-encode the file as UTF-8") from None
    if suffix == ".jsonl":
        out = []
        for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 is valid in JSON
            if not line.strip():
                continue
            try:
                out.append((f"{path}:{number}", json.loads(line)))
            except (ValueError, RecursionError) as e:
                raise ForgetuneError(f"{path}:{number}: malformed JSON ({_json_problem(e)}); fix or remove that line"
                                     ) from None
        return out
    if suffix == ".json":
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            line = f":{e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
            raise ForgetuneError(f"{path}{line}: malformed JSON ({_json_problem(e)})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise ForgetuneError(f"{path}: a .json corpus must be a list of records (or {{\"data\": [...]}})")
        return [(f"{path}:record {i}", row) for i, row in enumerate(data)]
    raise ForgetuneError(f"{path}: unknown file type {suffix!r}; use .jsonl, .json, .parquet or a datasets folder")


def _json_problem(e: Exception) -> str:
    """json.loads' reason in a few words: its message, or what the non-JSONDecodeError failures mean."""
    if isinstance(e, json.JSONDecodeError):
        return e.msg
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(e).split(";")[0]  # e.g. an integer with more digits than Python converts


# The field that tells each format, in the order they are tried.
FORMAT_FIELDS = (("messages", "chat"), ("conversations", "sharegpt"), ("prompt", "prompt-completion"),
                 ("completion", "prompt-completion"), ("instruction", "alpaca"), ("output", "alpaca"),
                 ("question", "question-answer"), ("answer", "question-answer"), ("text", "text"))


def detect_format(row: dict[str, Any], where: str) -> str:
    fmt = next((fmt for key, fmt in FORMAT_FIELDS if key in row), None)
    if fmt is None:
        raise ForgetuneError(
            f"{where}: cannot tell the record format from fields {sorted(row)}; expected 'messages', "
            "'prompt'+'completion', 'instruction'+'output', 'question'+'answer', 'conversations' or 'text'"
        )
    return fmt


def _text(row: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise ForgetuneError(f"{where}: missing field '{key}'")
        return ""
    if not isinstance(value, str):
        raise ForgetuneError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    return _unicode(value, where, f"field '{key}'")


def _unicode(value: str, where: str, name: str) -> str:
    """JSON may escape a lone UTF-16 surrogate ("\\ud800"): a Python str that no tokenizer can encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ForgetuneError(
            f"{where}: {name} holds an unpaired surrogate escape (like \\ud800), which is not text; fix that string"
        ) from None
    return value


def _check_messages(messages: Any, where: str, key: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ForgetuneError(f"{where}: field '{key}' must be a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ForgetuneError(f"{where}: {key}[{i}] must be {{\"role\": str, \"content\": str}}")
        out.append({"role": _unicode(m["role"], where, f"{key}[{i}].role"),
                    "content": _unicode(m["content"], where, f"{key}[{i}].content")})
    return out


def _sharegpt(turns: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(turns, list) or not turns:
        raise ForgetuneError(f"{where}: field 'conversations' must be a non-empty list of {{from, value}} turns")
    out = []
    for i, turn in enumerate(turns):
        if not (isinstance(turn, dict) and isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str)):
            raise ForgetuneError(f"{where}: conversations[{i}] must be {{\"from\": str, \"value\": str}}")
        role = SHAREGPT_ROLES.get(turn["from"].lower())
        if role is None:
            raise ForgetuneError(f"{where}: conversations[{i}].from is {turn['from']!r}; expected one of "
                                 f"{', '.join(SHAREGPT_ROLES)}")
        out.append({"role": role, "content": _unicode(turn["value"], where, f"conversations[{i}].value")})
    return out


def record_format(row: Any, fmt: str, where: str) -> str:
    """The format of one record: `fmt`, or the one its fields tell with fmt auto."""
    if not isinstance(row, dict):
        raise ForgetuneError(f"{where}: a record must be a JSON object, got {type(row).__name__}")
    return detect_format(row, where) if fmt == "auto" else fmt


def to_messages(row: Any, fmt: str, where: str) -> list[dict[str, str]]:
    """One record -> a conversation (a text record: one assistant message holding its text)."""
    fmt = record_format(row, fmt, where)
    if fmt == "chat":
        if "messages" not in row:
            raise ForgetuneError(f"{where}: missing field 'messages'")
        return _check_messages(row["messages"], where, "messages")
    if fmt == "prompt-completion":
        prompt = row.get("prompt")
        if prompt is None:
            raise ForgetuneError(f"{where}: missing field 'prompt'")
        if isinstance(prompt, list):  # TRL's conversational prompt-completion
            messages = _check_messages(prompt, where, "prompt")
            completion = row.get("completion")
            if isinstance(completion, list):
                return messages + _check_messages(completion, where, "completion")
            return messages + [{"role": "assistant", "content": _text(row, "completion", where)}]
        return [
            {"role": "user", "content": _text(row, "prompt", where)},
            {"role": "assistant", "content": _text(row, "completion", where)},
        ]
    if fmt == "alpaca":
        instruction = _text(row, "instruction", where)
        extra = _text(row, "input", where, required=False)
        user = f"{instruction}\n\n{extra}" if extra else instruction
        return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row, "output", where)}]
    if fmt == "question-answer":
        return [{"role": "user", "content": _text(row, "question", where)},
                {"role": "assistant", "content": _text(row, "answer", where)}]
    if fmt == "sharegpt":
        return _sharegpt(row.get("conversations"), where)
    if fmt == "text":
        return [{"role": "assistant", "content": _text(row, "text", where)}]
    raise ForgetuneError(f"unknown data format {fmt!r}; choose auto, {', '.join(FORMATS)}")


def load_records(path: str | Path, fmt: str = "auto", system_prompt: str | None = None) -> list[Record]:
    path = Path(path)
    if fmt != "auto" and fmt not in FORMATS:
        raise ForgetuneError(f"unknown data format {fmt!r}; choose auto, {', '.join(FORMATS)}")
    records = []
    for index, (where, row) in enumerate(_read_raw(path)):
        plain_text = record_format(row, fmt, where) == "text"
        messages = to_messages(row, fmt, where)
        if system_prompt and messages[0]["role"] != "system" and not plain_text:
            messages = [{"role": "system", "content": system_prompt}] + messages
        record_id = str(row["id"]) if row.get("id") is not None else str(index)
        meta = row.get("meta", {}) if isinstance(row.get("meta"), dict) else {}
        records.append(Record(record_id, messages, where, meta, plain_text))
    if not records:
        raise ForgetuneError(f"{path}: no records found")
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise ForgetuneError(f"{r.where}: duplicate id {r.id!r}; ids must be unique")
        seen.add(r.id)
    return records


def _render_ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool, where: str) -> list[int]:
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as e:
        raise ForgetuneError(f"{where}: the tokenizer's chat template rejects this conversation ({e})") from None
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_messages(tokenizer, messages: list[dict[str, str]], where: str) -> tuple[list[int], list[int]]:
    """Token ids and labels for one conversation: every assistant turn is a response.

    Each assistant turn spans from the end of the rendered prefix-with-generation-prompt to the end of the rendered
    conversation up to and including that turn, so whatever the template emits after the content (end-of-turn token)
    is learned too.
    """
    full = _render_ids(tokenizer, messages, False, where)
    labels = [IGNORE_INDEX] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_render_ids(tokenizer, messages[:i], True, where)) if i else 0
        upto = full if i == len(messages) - 1 else _render_ids(tokenizer, messages[: i + 1], False, where)
        if full[: len(upto)] != upto:
            raise ForgetuneError(f"{where}: the chat template does not render turns as prefixes; cannot mask turns")
        for t in range(max(start, 1), len(upto)):  # position 0 has no preceding logits to score it
            labels[t] = full[t]
    return full, labels


def tokenize_text(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """A text record as language-modelling data (TRL's, for a `text` field): the tokenizer's own special tokens, then
    the end-of-sequence token, and a loss on every token but the first (nothing precedes it)."""
    ids = tokenizer(text)["input_ids"]
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]
    return ids, [IGNORE_INDEX] + ids[1:]


def tokenize_records(
    records: Sequence[Record], tokenizer, max_length: int, warn: bool = True
) -> tuple[Corpus, dict[str, int]]:
    """Tokenise, truncate to max_length and drop examples with no response token; returns (examples packed into a
    Corpus, counts)."""
    counts = {"examples": 0, "skipped_empty": 0, "truncated": 0}

    def examples():
        for r in tqdm(records, desc="tokenising", unit="ex", leave=False, disable=not log.isEnabledFor(logging.INFO)):
            if not any(m["role"] == "assistant" and m["content"].strip() for m in r.messages):
                counts["skipped_empty"] += 1
                continue
            input_ids, labels = (tokenize_text(tokenizer, r.messages[0]["content"]) if r.plain_text
                                 else tokenize_messages(tokenizer, r.messages, r.where))
            if len(input_ids) > max_length:
                counts["truncated"] += 1
                input_ids, labels = input_ids[:max_length], labels[:max_length]
            if all(label == IGNORE_INDEX for label in labels):
                counts["skipped_empty"] += 1
                continue
            last_assistant = max(i for i, m in enumerate(r.messages) if m["role"] == "assistant")
            yield Example(r.id, input_ids, labels, r.messages[:last_assistant], r.meta)

    corpus = Corpus.pack(examples())
    counts["examples"] = len(corpus)
    if warn:
        warn_counts(counts, max_length)
    return corpus, counts


def warn_counts(counts: dict[str, int], max_length: int) -> None:
    if counts["skipped_empty"]:
        log.warning("skipped %d example(s) with an empty response (or one truncated away)", counts["skipped_empty"])
    if counts["truncated"]:
        log.warning("truncated %d example(s) to max_length=%d tokens", counts["truncated"], max_length)


def load_examples(path: str | Path, tokenizer, fmt: str = "auto", max_length: int = 512,
                  system_prompt: str | None = None) -> tuple[Corpus, dict[str, int]]:
    records = load_records(path, fmt, system_prompt)
    examples, counts = tokenize_records(records, tokenizer, max_length, warn=False)
    if not examples:  # one error line, without the warnings that would only repeat it
        raise ForgetuneError(
            f"{path}: no usable example (all {len(records)} responses empty or truncated away at "
            f"max_length={max_length}); give the records assistant answers, or raise --max-length"
        )
    warn_counts(counts, max_length)
    return examples, counts

"""forgetune inside a TRL script: scored datasets line up with TRL's own tokens, ForgetSFTTrainer's loss is
forgetune's (and TRL's with objective sft), padding-free and packing keep the per-token columns aligned, and the
example script trains and saves a loadable model (also with LoRA)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments
from trl import SFTConfig, SFTTrainer

from conftest import REPO, TOKENIZER_DIR, build_tiny_llama
from forgetune.data.collator import Collator
from forgetune.errors import ForgetuneError
from forgetune.integrations.trl import ForgetSFTTrainer, score_dataset
from forgetune.objectives import build
from forgetune.trainer import ObjectiveTrainer
from tests_helpers import write_jsonl

TURN = "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
# ChatML with {% generation %} around the assistant turns (what assistant_only_loss reads); SYSTEM adds a default
# system prompt to a conversation that has none, as many models' templates do.
GENERATION_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}{% else %}" + TURN
    + "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SYSTEM = "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou add numbers.<|im_end|>\\n' }}{% endif %}"


def sums(n: int = 12) -> list[tuple[str, str]]:
    return [(f"What is {i} plus {i + 3}?", f"It is {2 * i + 3}.") for i in range(n)]


FORMATS = {
    "prompt-completion": ({}, lambda q, a: {"prompt": q + " ", "completion": a}),
    "conversational prompt-completion": ({}, lambda q, a: {"prompt": [{"role": "user", "content": q}],
                                                          "completion": [{"role": "assistant", "content": a}]}),
    "multi-turn chat, assistant turns only": ({"assistant_only_loss": True}, lambda q, a: {"messages": [
        {"role": "user", "content": q}, {"role": "assistant", "content": a},
        {"role": "user", "content": "And twice that?"}, {"role": "assistant", "content": "Double it."}]}),
    "chat with a template's system prompt": ({"assistant_only_loss": True}, lambda q, a: {"messages": [
        {"role": "user", "content": q}, {"role": "assistant", "content": a}]}),
    "text": ({}, lambda q, a: {"text": f"{q} {a}"}),
}


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory, tokenizer) -> Path:
    """A second tiny model: a reference trained already (--reference-model), so scoring trains nothing."""
    path = tmp_path_factory.mktemp("tiny-reference")
    build_tiny_llama(len(tokenizer), seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def sft_config(tmp_path: Path, **kwargs) -> SFTConfig:
    settings = {"output_dir": str(tmp_path / "out"), "report_to": "none", "use_cpu": True, "bf16": False,
                "per_device_train_batch_size": 4, "max_steps": 2, "learning_rate": 1e-3, "shuffle_dataset": False,
                "logging_steps": 1, "save_strategy": "no", **kwargs}
    return SFTConfig(**settings)


def fresh_tokenizer(template: str | None = None):
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    if template is not None:
        tok.chat_template = template
    return tok


def scored_sums(tiny_model_dir, reference_dir, tmp_path, **settings) -> Dataset:
    raw = Dataset.from_list([FORMATS["prompt-completion"][1](q, a) for q, a in sums()])
    return score_dataset(raw, str(tiny_model_dir), processing_class=fresh_tokenizer(), args=sft_config(tmp_path),
                         reference_model=str(reference_dir), output_dir=tmp_path / "scoring", **settings)


@pytest.mark.parametrize("name", list(FORMATS))
def test_polarity_and_base_ce_line_up_with_trls_tokens(name, tiny_model_dir, reference_dir, tmp_path):
    config, make = FORMATS[name]
    template = GENERATION_TEMPLATE if "chat" in name else None
    if name == "chat with a template's system prompt":
        template = SYSTEM + GENERATION_TEMPLATE
    raw = Dataset.from_list([make(q, a) for q, a in sums()])
    args = sft_config(tmp_path, **config)
    scored = score_dataset(raw, str(tiny_model_dir), processing_class=fresh_tokenizer(template), args=args,
                           reference_model=str(reference_dir), output_dir=tmp_path / "scoring")
    trl_rows = SFTTrainer(model=str(tiny_model_dir), args=args, train_dataset=raw,
                          processing_class=fresh_tokenizer(template)).train_dataset
    assert len(scored) == len(trl_rows) == len(raw)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for ours, theirs in zip(scored, trl_rows, strict=True):
        assert ours["input_ids"] == theirs["input_ids"] and ours["labels"] == theirs["labels"]
        ids = torch.tensor(ours["input_ids"])
        trained = [t for t, label in enumerate(theirs["labels"]) if label != -100 and t > 0]
        assert trained and [t for t, p in enumerate(ours["polarity"]) if p != 0] == trained
        with torch.no_grad():
            logits = base(ids[None]).logits[0]
        expected = F.cross_entropy(logits[[t - 1 for t in trained]], ids[trained], reduction="none")
        assert torch.allclose(torch.tensor(ours["base_ce"])[trained], expected, atol=1e-4)
        assert all(ce == 0.0 for t, ce in enumerate(ours["base_ce"]) if t not in trained)
    if "system prompt" in name:
        assert "You add numbers." in fresh_tokenizer().decode(scored[0]["input_ids"])
    if name == "multi-turn chat, assistant turns only":  # both assistant turns, no user turn
        row = scored[0]
        learned = fresh_tokenizer().decode([i for i, p in zip(row["input_ids"], row["polarity"], strict=True) if p])
        assert "Double it." in learned and "It is 3." in learned and "plus" not in learned


def forgetune_loss(model, rows, objective) -> torch.Tensor:
    """The same examples through forgetune's own trainer: its collator and its compute_loss."""
    trainer = ObjectiveTrainer(model=model, args=TrainingArguments(output_dir="unused", use_cpu=True, report_to=[]),
                               objective=objective)
    features = [{k: row[k] for k in ("input_ids", "labels", "polarity", "base_ce")} for row in rows]
    return trainer.compute_loss(model, Collator(pad_token_id=0)(features))


@pytest.mark.parametrize("objective", ["forget-npo", "ignore", "forget-unlikelihood", "forget"])
def test_loss_equals_forgetune_trainers(objective, tiny_model_dir, reference_dir, tmp_path):
    scored = scored_sums(tiny_model_dir, reference_dir, tmp_path, negative_below=None)
    trainer = ForgetSFTTrainer(model=str(tiny_model_dir), args=sft_config(tmp_path), train_dataset=scored,
                               processing_class=fresh_tokenizer(), objective=objective)
    rows = [scored[i] for i in range(5)]
    assert any(-1 in row["polarity"] for row in rows)
    model = trainer.model.train()
    ours = trainer.compute_loss(model, trainer.data_collator(rows))
    theirs = forgetune_loss(model, rows, build(objective))
    assert abs(ours.item() - theirs.item()) < 1e-6


def test_objective_sft_is_trls_own_loss(tiny_model_dir, reference_dir, tmp_path):
    scored = scored_sums(tiny_model_dir, reference_dir, tmp_path)
    forget = ForgetSFTTrainer(model=str(tiny_model_dir), args=sft_config(tmp_path), train_dataset=scored,
                              processing_class=fresh_tokenizer(), objective="sft")
    plain = SFTTrainer(model=str(tiny_model_dir), args=sft_config(tmp_path),
                       train_dataset=scored.remove_columns(["polarity", "base_ce"]), processing_class=fresh_tokenizer())
    rows = [scored[i] for i in range(6)]
    ours = forget.compute_loss(forget.model.train(), forget.data_collator(rows))
    batch = plain.data_collator([{k: v for k, v in row.items() if k not in ("polarity", "base_ce")} for row in rows])
    assert abs(ours.item() - plain.compute_loss(plain.model.train(), batch).item()) < 1e-6


def test_padding_free_batch_gives_the_padded_loss(tiny_model_dir, reference_dir, tmp_path):
    scored = scored_sums(tiny_model_dir, reference_dir, tmp_path)
    losses = []
    for padding_free in (False, True):
        args = sft_config(tmp_path, padding_free=padding_free, max_length=None)
        trainer = ForgetSFTTrainer(model=str(tiny_model_dir), args=args, train_dataset=scored,
                                   processing_class=fresh_tokenizer(), objective="forget-npo")
        batch = trainer.data_collator([scored[i] for i in range(4)])
        assert batch["polarity"].shape == batch["input_ids"].shape
        assert batch["input_ids"].shape[0] == (1 if padding_free else 4)
        losses.append(trainer.compute_loss(trainer.model.train(), batch).item())
    assert abs(losses[0] - losses[1]) < 1e-5


def test_packing_carries_every_token_with_its_columns(tiny_model_dir, reference_dir, tmp_path):
    scored = scored_sums(tiny_model_dir, reference_dir, tmp_path)
    trainer = ForgetSFTTrainer(model=str(tiny_model_dir), args=sft_config(tmp_path, packing=True, max_length=64),
                               train_dataset=scored, processing_class=fresh_tokenizer(), objective="forget-npo")
    packed = trainer.train_dataset
    assert len(packed) < len(scored)

    def triples(rows):
        return sorted((i, p, round(c, 5)) for row in rows
                      for i, p, c in zip(row["input_ids"], row["polarity"], row["base_ce"], strict=True))

    assert triples(packed) == triples(scored)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_unscored_data_or_unknown_objective_is_one_clear_error(tiny_model_dir, reference_dir, tmp_path):
    raw = Dataset.from_list([FORMATS["prompt-completion"][1](q, a) for q, a in sums()])
    with pytest.raises(ForgetuneError, match="needs the polarity column.*score_dataset"):
        ForgetSFTTrainer(model=str(tiny_model_dir), args=sft_config(tmp_path), train_dataset=raw,
                         processing_class=fresh_tokenizer(), objective="forget-npo")
    with pytest.raises(ForgetuneError, match="unknown objective"):
        ForgetSFTTrainer(model=str(tiny_model_dir), args=sft_config(tmp_path), train_dataset=raw,
                         processing_class=fresh_tokenizer(), objective="nope")


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_example_script_trains_and_saves_a_loadable_model(lora, tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [FORMATS["prompt-completion"][1](q, a) for q, a in sums(16)])
    trusted = write_jsonl(tmp_path / "trusted.jsonl", [{"prompt": q, "completion": a} for q, a in sums(6)])
    out = tmp_path / "model"
    cmd = [sys.executable, str(REPO / "examples" / "trl_forget.py"), "--model_name_or_path", str(tiny_model_dir),
           "--dataset_name", str(data), "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size",
           "4", "--report_to", "none", "--use_cpu", "--bf16", "false", "--reference_data", str(trusted),
           "--scoring_dir", str(tmp_path / "scoring"), "--objective", "forget-npo", "--logging_steps", "1"]
    if lora:
        cmd += ["--use_peft", "--lora_r", "4", "--lora_alpha", "8"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ce_neg" in done.stdout + done.stderr  # the objective's own metrics were logged
    if lora:
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(out)
    else:
        model = AutoModelForCausalLM.from_pretrained(out)
    assert model(torch.tensor([[1, 5, 7]])).logits.shape[-1] == model.config.vocab_size
    assert (tmp_path / "scoring" / "config.yaml").is_file()


def test_trl_options_keep_working(tiny_model_dir, reference_dir, tmp_path):
    """Gradient checkpointing, bf16 autocast, an unscored eval set evaluated by TRL's own loss, a user's callback and
    TensorBoard (the objective's metrics in its event files)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import TrainerCallback

    class Seen(TrainerCallback):
        logs: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs or {}))

    scored = scored_sums(tiny_model_dir, reference_dir, tmp_path)
    held_out = Dataset.from_list([FORMATS["prompt-completion"][1](q, a) for q, a in sums(4)])
    args = sft_config(tmp_path, gradient_checkpointing=True, bf16=True, eval_strategy="steps", eval_steps=1,
                      report_to="tensorboard")
    seen = Seen()
    trainer = ForgetSFTTrainer(model=str(tiny_model_dir), args=args, train_dataset=scored, eval_dataset=held_out,
                               processing_class=fresh_tokenizer(), objective="forget-npo", callbacks=[seen])
    trainer.train()
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert len(evals) == 2 and all(e > 0 for e in evals)
    assert any("ce_neg" in logs for logs in seen.logs)
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(0 <= h["mean_token_accuracy"] <= 1 and h["entropy"] > 0 for h in train_logs)  # TRL's own metrics too
    lengths = sorted(len(row) for row in scored["input_ids"])
    assert sum(lengths[:8]) <= train_logs[-1]["num_tokens"] <= sum(lengths[-8:])  # the 8 rows of 2 steps of 4
    assert train_logs[0]["num_tokens"] < train_logs[-1]["num_tokens"]
    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert {"train/ce_neg", "train/neg_term", "eval/loss"} <= set(events.Tags()["scalars"])


def test_options_that_cannot_work_are_refused_at_construction(tiny_model_dir, reference_dir, tmp_path):
    scored = scored_sums(tiny_model_dir, reference_dir, tmp_path)
    with pytest.raises(ForgetuneError, match="loss_type"):
        ForgetSFTTrainer(model=str(tiny_model_dir), args=sft_config(tmp_path, loss_type="dft"), train_dataset=scored,
                         processing_class=fresh_tokenizer())
    with pytest.raises(ForgetuneError, match="compute_loss_func"):
        ForgetSFTTrainer(model=str(tiny_model_dir), args=sft_config(tmp_path), train_dataset=scored,
                         processing_class=fresh_tokenizer(), compute_loss_func=lambda *a, **k: 0)


def test_readme_shows_the_scripts_real_diff():
    """The README's diff is `diff -u examples/trl_sft.py examples/trl_forget.py`, and the code (the docstring aside)
    changes in at most 10 lines."""
    import difflib

    plain, forget = (Path(REPO / "examples" / n).read_text() for n in ("trl_sft.py", "trl_forget.py"))
    diff = "".join(difflib.unified_diff(plain.splitlines(keepends=True), forget.splitlines(keepends=True),
                                        "examples/trl_sft.py", "examples/trl_forget.py"))
    assert "```diff\n" + diff + "```" in (REPO / "README.md").read_text()
    code = [text.split('"""', 2)[2].splitlines() for text in (plain, forget)]
    added = [line for line in difflib.unified_diff(*code, lineterm="")
             if line.startswith("+") and not line.startswith("+++") and line[1:].strip()]
    assert 0 < len(added) <= 10, added


def test_gradient_accumulation_equals_the_bigger_batch(tiny_model_dir, reference_dir, tmp_path):
    """batch 4 x 2 accumulation steps gives the gradient of batch 8: the objective divides by the whole step's
    counts (a loss exact under accumulation), as TRL's own loss divides by the step's token count."""
    from transformers import TrainerCallback

    class FirstGradient(TrainerCallback):
        def __init__(self):
            self.grad = None

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if self.grad is None:
                self.grad = model.get_input_embeddings().weight.grad.detach().clone()

    scored = scored_sums(tiny_model_dir, reference_dir, tmp_path).select(range(8))
    grads = []
    for batch, accumulation in ((8, 1), (4, 2)):
        seen = FirstGradient()
        args = sft_config(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                          max_steps=1, max_grad_norm=1e9)  # unclipped: clipping would hide a factor
        ForgetSFTTrainer(model=str(tiny_model_dir), args=args, train_dataset=scored, processing_class=fresh_tokenizer(),
                         objective="forget-npo", callbacks=[seen]).train()
        grads.append(seen.grad)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)


def test_the_same_call_twice_scores_once_in_forgetunes_cache(tiny_model_dir, reference_dir, tmp_path, monkeypatch):
    """Without output_dir the run directory is one per content hash under FORGETUNE_CACHE: the second call finds
    every stage up to date and returns the same columns."""
    from forgetune.io import DONE_MARKER

    monkeypatch.setenv("FORGETUNE_CACHE", str(tmp_path / "cache"))
    raw = Dataset.from_list([FORMATS["prompt-completion"][1](q, a) for q, a in sums()])

    def scored() -> Dataset:
        return score_dataset(raw, str(tiny_model_dir), processing_class=fresh_tokenizer(), args=sft_config(tmp_path),
                             reference_model=str(reference_dir))

    first = scored()
    [run_dir] = list((tmp_path / "cache" / "scored").iterdir())
    marker = run_dir / "score" / DONE_MARKER
    written = marker.stat().st_mtime_ns
    second = scored()
    assert marker.stat().st_mtime_ns == written and (run_dir / "config.yaml").is_file()
    assert first["polarity"] == second["polarity"] and first["base_ce"] == second["base_ce"]

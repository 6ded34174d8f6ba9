"""`forgetune demo`: the whole pipeline on the embedded SmolLM2-135M and a shipped noisy arithmetic set.

Prints the positive/negative split (and how it lines up with the known wrong answers), a few answers before and
after training, and exact match on held-out clean questions.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np

from forgetune import pipeline
from forgetune.bench.data.arith import held_out
from forgetune.data.collator import response_positions
from forgetune.generation import generate_answers
from forgetune.io import write_json
from forgetune.metrics.accuracy import exact_match
from forgetune.metrics.detection import corrupted_tokens, detection_auroc
from forgetune.models import load_for_inference, load_model
from forgetune.scoring.partition import NEGATIVE, POSITIVE

DEMO_DATA = "noisy_arith.jsonl"
HELD_OUT = 40


def demo_flags() -> dict[str, Any]:
    """What the demo changes from the library defaults: its data, its run dir, and a CPU-sized schedule."""
    return {
        "data": str(resources.files("forgetune") / "assets" / DEMO_DATA),
        "output": "runs/demo",
        "batch_size": 8,
        "epochs": 2.0,
        "reference_epochs": 2.0,
        "max_new_tokens": 16,
    }


def _marked(tokenizer, ex, polarity: np.ndarray) -> str:
    """The response with negative tokens in [brackets] and ignored ones in (parentheses)."""
    pieces = []
    for pos, label in zip(response_positions(ex.labels), polarity, strict=True):
        text = tokenizer.decode([ex.input_ids[pos]])
        pieces.append(text if label == POSITIVE else f"[{text}]" if label == NEGATIVE else f"({text})")
    return "".join(pieces).replace("<|im_end|>", "⏎").replace("\n", "")


def split_report(run: pipeline.Run) -> None:
    polarity = np.asarray(pipeline.load_polarity(run))
    offsets = pipeline.example_offsets(run.examples)
    wrong_tokens, corrupted = corrupted_tokens(run.tokenizer, run.examples)
    neg = polarity == NEGATIVE
    print("\n== token split")
    print(f"   {int((polarity == POSITIVE).sum())} positive, {int(neg.sum())} negative, "
          f"{int((polarity == 0).sum())} ignored of {polarity.size} response tokens")
    if wrong_tokens.any():
        print(f"   negative: {neg[wrong_tokens].mean():.1%} of the {int(wrong_tokens.sum())} wrong tokens (those that "
              f"differ from the true answer), {neg[~wrong_tokens].mean():.1%} of the other tokens")
        ranking_report(run, wrong_tokens)
    print("   examples (negatives in [brackets], ignored in (parentheses)):")
    shown = [i for i in range(len(run.examples)) if corrupted[i]][:3] + [i for i in range(len(run.examples))
                                                                          if not corrupted[i]][:2]
    for i in shown:
        ex = run.examples[i]
        truth = f"  (wrong; truth: {ex.meta['clean_completion']})" if corrupted[i] else ""
        marked = _marked(run.tokenizer, ex, polarity[offsets[i] : offsets[i + 1]])
        print(f"   {ex.prompt_messages[-1]['content']:<22} -> {marked}{truth}")


def ranking_report(run: pipeline.Run, wrong_tokens: np.ndarray) -> None:
    """How well each ranking finds the wrong tokens of this corpus: which one is in force matters, and the scores
    of both are already computed."""
    ranked = {"difference": np.asarray(pipeline.load_scores(run)),
              "reference": -np.asarray(pipeline.load_scores(run, "ce_ref"))}
    names = {"difference": "CE_base - CE_ref", "reference": "-CE_ref"}
    aurocs = ", ".join(f"{'*' if name == run.cfg.partition.rank_by else ''}--rank-by {name} ({names[name]}) "
                       f"{detection_auroc(values, wrong_tokens):.3f}" for name, values in ranked.items())
    print(f"   token AUROC of finding the wrong tokens: {aurocs} (* in force; 0.5 = chance; docs/results.md "
          "section 0 says which to use when)")


def held_out_report(run: pipeline.Run) -> dict[str, float]:
    train = [{"prompt": ex.prompt_messages[-1]["content"]} for ex in run.examples]
    test = held_out(HELD_OUT, seed=12345, train=train)  # never a training problem, in either order
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in test]
    refs = [r["completion"] for r in test]
    answers = {}
    for name, model in (("base", load_model(run.model_path)), ("trained", load_for_inference(run.layout.model))):
        answers[name] = generate_answers(model, run.tokenizer, prompts, run.cfg.generate.max_new_tokens)
        del model
    print(f"\n== {HELD_OUT} held-out questions with correct answers (a few shown)")
    for r, base, trained in list(zip(test, answers["base"], answers["trained"], strict=True))[:4]:
        print(f"   {r['prompt']:<22} base: {base!r:<34} trained: {trained!r}")
    scores = {name: exact_match(a, refs) for name, a in answers.items()}
    print(f"   exact match: base {scores['base']:.1%}, trained ({run.cfg.train.objective}) {scores['trained']:.1%}")
    write_json(run.dir / "demo_eval.json", scores)
    return scores


def run_demo(run: pipeline.Run) -> None:
    corrupted = sum(bool(ex.meta.get("corrupted")) for ex in run.examples)
    print(f"== forgetune demo: {run.model_path.name} on {len(run.examples)} additions, {corrupted} with a wrong answer;"
          f" objective {run.cfg.train.objective}")
    summary = pipeline.run_all(run)
    if run.objective().needs_partition:
        split_report(run)
    held_out_report(run)
    print("\n== stages")
    pipeline.print_summary(summary, run.dir)

"""Speed benchmarks that print ratios measured in the same run: `NAME ratio=X target=Y ok|MISS`.

    python benchmarks/run.py           # 1e8-score partition, forget vs sft step on the tiny model
    python benchmarks/run.py --quick   # smaller sizes, well under a minute

Covers issue #6 targets 2 and 3 so far (scoring throughput, multi-process, TRL comparison: not yet).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from forgetune import partition_tokens  # noqa: E402


def best_of(fn, repeat: int = 3) -> float:
    """Fastest of `repeat` runs: the least disturbed by a noisy machine."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def report(name: str, ratio: float, target: str, ok: bool, detail: str) -> None:
    print(f"{name} ratio={ratio:.3f} target={target} {'ok' if ok else 'MISS'}  ({detail})")


def paper_partition(scores_per_example: list[np.ndarray], rho: float) -> set[tuple[int, int]]:
    """A faithful re-implementation of the paper's approach: (score, i, j) tuples, Python `sorted`, top set."""
    tokens = [(float(s), i, j) for i, row in enumerate(scores_per_example) for j, s in enumerate(row)]
    ranked = sorted(tokens, key=lambda t: t[0], reverse=True)
    return {(i, j) for _, i, j in ranked[: int(rho * len(ranked))]}


def bench_partition(n: int, n_paper: int) -> None:
    rng = np.random.default_rng(0)
    scores = rng.standard_normal(n).astype(np.float32)
    ours = best_of(lambda: partition_tokens(scores, 0.7))
    baseline = best_of(lambda: np.partition(scores, int(0.3 * n)))
    report(f"partition_{n:.0e}_vs_np_partition", ours / baseline, "<=1.5", ours / baseline <= 1.5,
           f"ours {ours:.3f} s, np.partition {baseline:.3f} s")
    small = scores[:n_paper]
    rows = np.split(small, np.arange(50, n_paper, 50))  # 50-token responses
    paper = best_of(lambda: paper_partition(rows, 0.7), repeat=1)
    ours_small = best_of(lambda: partition_tokens(small, 0.7))
    print(f"partition_{n_paper:.0e}_speedup_over_paper ratio={paper / ours_small:.1f} target=report ok  "
          f"(paper tuples+sorted {paper:.3f} s, ours {ours_small:.4f} s)")


def bench_step(steps: int) -> None:
    """One optimizer step of `forget` vs `sft` on the same model, batch and tokens."""
    from transformers import AutoTokenizer

    from conftest import TOKENIZER_DIR, build_tiny_llama
    from forgetune.config import TrainConfig
    from forgetune.objectives import TokenBatch, build
    from forgetune.scoring.token_logps import response_token_ce, target_mask

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(0)
    input_ids = torch.randint(3, len(tokenizer), (16, 128))
    labels = input_ids.clone()
    labels[:, :32] = -100
    polarity = torch.where(torch.rand(16, 128) < 0.7, 1, -1)
    attention = torch.ones_like(input_ids)

    def make_step(objective_name: str):
        model = build_tiny_llama(len(tokenizer))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        objective = build(TrainConfig(objective=objective_name))

        def step():
            ce = response_token_ce(model(input_ids=input_ids, attention_mask=attention).logits, labels)
            loss, _ = objective(ce, TokenBatch(polarity=polarity[target_mask(labels)]), 0.5)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    sft, forget = make_step("sft"), make_step("forget")
    for fn in (sft, forget):  # warm-up
        fn()
    times: dict[str, list[float]] = {"sft": [], "forget": []}
    for _ in range(steps):  # interleaved, so both see the same machine state
        times["sft"].append(best_of(sft, 1))
        times["forget"].append(best_of(forget, 1))
    t_sft, t_forget = min(times["sft"]), min(times["forget"])
    ratio = t_forget / t_sft
    report("forget_step_vs_sft_step", ratio, "<=1.03", ratio <= 1.03,
           f"tiny Llama, batch 16 x 128 tokens: forget {1000 * t_forget:.1f} ms, sft {1000 * t_sft:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (under a minute)")
    args = parser.parse_args()
    bench_partition(10**7 if args.quick else 10**8, 10**5 if args.quick else 10**6)
    bench_step(5 if args.quick else 20)


if __name__ == "__main__":
    main()

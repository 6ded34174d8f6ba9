"""Speed benchmarks that print ratios measured in the same run: `NAME ratio=X target=Y ok|MISS`.

    python benchmarks/run.py           # the embedded SmolLM2-135M where a target needs a real model
    python benchmarks/run.py --quick   # small random models and sizes, about a minute

Targets (issues #6, #21): scoring throughput vs the raw forward of the same models on the same tokens, flat peak RSS of
scoring at two corpus sizes, training's peak RSS with a 128k vocabulary and its step time (chunked head vs full
logits), a `forget` step vs an `sft` step, the global partition vs np.partition and vs a naive pure-Python sort,
forgetune's `sft` tokens/s vs TRL's SFTTrainer, and a forget-npo step inside TRL (ForgetSFTTrainer) vs SFTTrainer's
(needs `pip install trl`); reported beside them: lm-eval multiple choice through forgetune's model vs the harness's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
for _flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):  # a benchmark never fetches
    os.environ.setdefault(_flag, "1")

from forgetune import partition_tokens  # noqa: E402


def best_of(fn, repeat: int = 3) -> float:
    """Fastest of `repeat` runs: the least disturbed by a noisy machine."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved(sides: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of one call of each side, taken in turn (A B A B ...) `repeats` times, so that every side sees the same
    machine state."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            times[name].append(best_of(fn, 1))
    return times


def report(name: str, ratio: float, target: str, ok: bool, detail: str) -> None:
    print(f"{name} ratio={ratio:.3f} target={target} {'ok' if ok else 'MISS'}  ({detail})")


def python_sort_partition(scores_per_example: list[np.ndarray], rho: float) -> set[tuple[int, int]]:
    """A naive pure-Python global ranking: (score, i, j) tuples, `sorted`, the top set. Not the paper's code (it is
    not public); a reference point for what a straightforward Python implementation costs."""
    tokens = [(float(s), i, j) for i, row in enumerate(scores_per_example) for j, s in enumerate(row)]
    ranked = sorted(tokens, key=lambda t: t[0], reverse=True)
    return {(i, j) for _, i, j in ranked[: int(rho * len(ranked))]}


def bench_partition(n: int, n_python: int) -> None:
    rng = np.random.default_rng(0)
    scores = rng.standard_normal(n).astype(np.float32)
    ours = best_of(lambda: partition_tokens(scores, 0.7))
    baseline = best_of(lambda: np.partition(scores, int(0.3 * n)))
    report(f"partition_{n:.0e}_vs_np_partition", ours / baseline, "<=1.5", ours / baseline <= 1.5,
           f"ours {ours:.3f} s, np.partition {baseline:.3f} s")
    small = scores[:n_python]
    rows = np.split(small, np.arange(50, n_python, 50))  # 50-token responses
    python = best_of(lambda: python_sort_partition(rows, 0.7), repeat=1)
    ours_small = best_of(lambda: partition_tokens(small, 0.7))
    print(f"partition_{n_python:.0e}_speedup_over_naive_python_sort ratio={python / ours_small:.1f} target=report ok  "
          f"(Python tuples + sorted {python:.3f} s, ours {ours_small:.4f} s)")


def bench_step(steps: int) -> None:
    """One optimizer step of `forget` vs `sft` on the same model, batch and tokens."""
    from transformers import AutoTokenizer

    from forgetune.objectives import TokenBatch, build
    from forgetune.scoring.token_logps import response_token_ce, target_mask
    from tests_helpers import TOKENIZER_DIR, build_tiny_llama

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
        objective = build(objective_name)

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
    times = interleaved({"sft": sft, "forget": forget}, steps)
    t_sft, t_forget = min(times["sft"]), min(times["forget"])
    ratio = t_forget / t_sft
    report("forget_step_vs_sft_step", ratio, "<=1.03", ratio <= 1.03,
           f"tiny Llama, batch 16 x 128 tokens: forget {1000 * t_forget:.1f} ms, sft {1000 * t_sft:.1f} ms")


def small_llama(vocab_size: int, quick: bool):
    """The embedded SmolLM2-135M (full runs), or a random Llama with a real-sized vocabulary (--quick)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if not quick:
        from forgetune.models import embedded_model_dir

        return AutoModelForCausalLM.from_pretrained(embedded_model_dir()).eval(), "SmolLM2-135M"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval(), "random Llama 128x2, vocab 49152"


def synthetic_examples(n: int, vocab_size: int, seed: int = 0):
    """Chat-like examples, packed as the data loaders pack them: a 30-80 token prompt and a 10-120 token response
    (the mix of a typical SFT set)."""
    from forgetune.data.corpus import IGNORE_INDEX, Corpus, Example

    rng = np.random.default_rng(seed)

    def examples():
        for i in range(n):
            prompt, response = int(rng.integers(30, 80)), int(rng.integers(10, 120))
            ids = rng.integers(3, vocab_size, prompt + response).tolist()
            yield Example(f"ex{i}", ids, [IGNORE_INDEX] * prompt + ids[prompt:], [])

    return Corpus.pack(examples())


def bench_scoring(quick: bool) -> None:
    """Scoring (per-token CE of base and reference) vs the raw forward of the same two models on the same batches."""
    from forgetune.data.collator import Collator
    from forgetune.scoring.scorer import token_ce

    vocab, batch_size = 49152, 16
    base, name = small_llama(vocab, quick)
    reference = [base, base]  # two frozen models scored one after the other, as the score stage does
    examples = synthetic_examples(64 if quick else 32, vocab)  # the real model's 49k-row head makes each pass costly
    order = np.argsort(-examples.lengths, kind="stable")  # the same length-bucketed batches
    collate = Collator(0)
    batches = [collate.examples(examples[int(i)] for i in order[s : s + batch_size])
               for s in range(0, len(order), batch_size)]

    @torch.inference_mode()
    def raw():
        for model in reference:
            for b in batches:
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])

    def ours():
        for model in reference:
            token_ce(model, examples, 0, batch_size)

    raw(), ours()  # warm-up
    t_raw, t_ours = best_of(raw, 2), best_of(ours, 2)
    tokens = 2 * sum(len(ex.input_ids) for ex in examples)
    ratio = t_raw / t_ours  # throughput ratio: ours tokens/s over raw tokens/s
    report("scoring_throughput_vs_raw_forward", ratio, ">=0.9", ratio >= 0.9,
           f"{name}, {len(examples)} examples x 2 models, batch {batch_size}: ours {tokens / t_ours:.0f} tok/s, "
           f"raw forward {tokens / t_raw:.0f} tok/s")


# Peak RSS inside a measuring child process: its own memory image's high-water mark (VmHWM). ru_maxrss would not do:
# a child started by vfork + exec inherits the parent's peak through exec (the kernel records the old image's).
PEAK_RSS = """
def peak_rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
"""


def _scoring_rss(n: int) -> tuple[int, int]:
    """(peak RSS in kB once n synthetic examples are built, peak RSS after scoring them into an .npy file, as the score
    stage does) of a fresh process. The model is a 32-wide Llama with a 512-token vocabulary: memory growth with the
    corpus size does not depend on the model, and 10^5 examples score in about a minute on 2 cores."""
    code = f"""
import json, sys, tempfile
import numpy as np, torch
from transformers import LlamaConfig, LlamaForCausalLM
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from run import synthetic_examples
from forgetune.data.corpus import example_offsets
from forgetune.io import NpyFile
from forgetune.scoring.scorer import token_ce
{PEAK_RSS}
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2)).eval()
examples = synthetic_examples({n}, 512)
loaded = peak_rss()
with tempfile.TemporaryDirectory() as d, NpyFile(d + "/ce.npy", int(example_offsets(examples)[-1])) as out:
    token_ce(model, examples, 0, 64, out=out, desc="")
print(json.dumps([loaded, peak_rss()]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, peak = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded, peak


def bench_scoring_memory(quick: bool) -> None:
    """Peak RSS of scoring 10^5 examples vs 10^3 (10^4 vs 10^3 with --quick): the whole process, and scoring's own
    share (its peak over the corpus already in memory)."""
    small, large = (10**3, 10**4) if quick else (10**3, 10**5)
    (loaded_small, peak_small), (loaded_large, peak_large) = _scoring_rss(small), _scoring_rss(large)
    ratio = peak_large / peak_small
    report(f"scoring_peak_rss_{large:.0e}_vs_{small:.0e}", ratio, "<=1.1", ratio <= 1.1,
           f"{small} examples {peak_small / 1024:.0f} MB, {large} examples {peak_large / 1024:.0f} MB; before scoring "
           f"(imports, model, the packed examples) {loaded_small / 1024:.0f} / {loaded_large / 1024:.0f} MB")
    own_small, own_large = peak_small - loaded_small, peak_large - loaded_large
    print(f"scoring_own_rss_{large:.0e}_vs_{small:.0e} ratio={own_large / max(own_small, 1):.2f} target=report ok  "
          f"(scoring's peak over the loaded corpus: {own_small / 1024:.0f} MB vs {own_large / 1024:.0f} MB; scores "
          "are written to an .npy file slice by slice)")


def _training_rss(chunked: bool, tokens: int) -> int:
    """Peak RSS (kB) of a fresh process that runs one training forward and backward of a 128k-vocabulary, 64-wide
    Llama on `tokens` response tokens: the head a chunk at a time (forgetune's training path), or the full logits."""
    code = f"""
import json, torch
from transformers import LlamaConfig, LlamaForCausalLM
from forgetune.scoring.token_logps import response_token_ce, training_response_token_ce
{PEAK_RSS}
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings={tokens}))
ids = torch.randint(0, 128256, (1, {tokens}))
batch = {{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}}
if {chunked}:
    ce, _ = training_response_token_ce(model, batch, model)
else:
    ce = response_token_ce(model(input_ids=ids, attention_mask=batch["attention_mask"]).logits, batch["labels"])
ce.mean().backward()
print(json.dumps(peak_rss()))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def bench_training_memory(quick: bool) -> None:
    """The training step's peak memory with a 128k vocabulary: chunked head vs the full (B, T, V) logits."""
    tokens = 1024 if quick else 2048
    chunked, full = _training_rss(True, tokens), _training_rss(False, tokens)
    ratio = chunked / full
    report("training_peak_rss_chunked_vs_full_logits", ratio, "<=0.5", ratio <= 0.5,
           f"128k vocabulary, 64-wide Llama, {tokens} response tokens, forward + backward: chunked head "
           f"{chunked / 1024:.0f} MB, full logits {full / 1024:.0f} MB")


def bench_chunked_step_time(quick: bool) -> None:
    """Training forward + backward with the chunked, checkpointed head (forgetune's path) vs the model's full logits:
    on the benches' own model and data (prompt tokens skip the head; each response row's logits are recomputed in
    the backward), and on the worst case for the chunks, a 64-wide 128k-vocabulary model whose every token is a
    response token (the head is nearly all the compute, and its logits are computed twice). Interleaved, median of the
    repeats."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from forgetune.bench.data import arith
    from forgetune.data.collator import Collator
    from forgetune.models import embedded_model_dir, load_tokenizer
    from forgetune.scoring.token_logps import response_token_ce, shared_start, training_response_token_ce

    tokenizer = load_tokenizer(embedded_model_dir())
    examples = prompt_completion_examples(arith.make_arith(16, noise=0.0, seed=0), tokenizer, "arith")
    arith_batch = Collator(tokenizer.pad_token_id).examples(examples)
    model, name = small_llama(49152, quick)
    torch.manual_seed(0)
    tokens = 1024 if quick else 2048
    wide_vocab = LlamaForCausalLM(LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=128,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                              max_position_embeddings=tokens))
    ids = torch.randint(0, 128256, (1, tokens))
    every_token = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    cases = ((f"{name}, 16 arith examples ({int(arith_batch['attention_mask'].sum())} tokens)", model, arith_batch,
              "<=1.10", "training_step_time_chunked_vs_full_logits"),
             (f"64-wide Llama, 128k vocabulary, {tokens} tokens all in the response", wide_vocab, every_token,
              "report", "training_step_time_chunked_vs_full_logits_worst_case"))
    repeats = 3 if quick else 7
    for label, net, batch, target, line in cases:
        net.train()

        def chunked(net=net, batch=batch, share_prefix=False):
            training_response_token_ce(net, batch, net, share_prefix=share_prefix)[0].mean().backward()

        def full(net=net, batch=batch):
            response_token_ce(net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                              batch["labels"]).mean().backward()

        sides = {"chunked": chunked, "full": full}
        if batch is arith_batch:  # the same step with the examples' common start run once (the trainer's default)
            sides["shared"] = lambda net=net, batch=batch: chunked(net, batch, share_prefix=True)
        for side in sides.values():  # warm-up
            side()
        times = {name: float(np.median(t)) for name, t in interleaved(sides, repeats).items()}
        ratio = times["chunked"] / times["full"]
        ok = target == "report" or ratio <= 1.10
        measured = f"forward + backward, median of {repeats} interleaved"
        report(line, ratio, target, ok, f"{label}, {measured}: chunked {1000 * times['chunked']:.0f} ms, full logits "
               f"{1000 * times['full']:.0f} ms")
        if "shared" in times:
            start = shared_start(batch["input_ids"], batch["attention_mask"])
            report("training_step_time_shared_prefix_vs_not", times["shared"] / times["chunked"], "report", True,
                   f"{label}, their first {start} of {batch['input_ids'].shape[1]} tokens in common (system prompt "
                   f"and template), {measured}: run once per batch {1000 * times['shared']:.0f} ms, once per example "
                   f"{1000 * times['chunked']:.0f} ms")


def shared_data() -> Path | None:
    """`../shared/data` beside the repository (GSM8K, TruthfulQA), where the benches read them; None if absent."""
    folder = Path(__file__).resolve().parents[2] / "shared" / "data"
    return folder if folder.is_dir() else None


def real_training_rows(name: str) -> list[dict] | None:
    """The training rows `forgetune bench NAME` trains on for seed 0 at its default sizes (gsm8k, truthfulqa), or
    None without ../shared/data."""
    from forgetune.bench.data import spec, split_sizes

    data = shared_data()
    if data is None:
        return None
    bench = spec(name)
    config = argparse.Namespace(data_dir=str(data), noise=0.3)
    return bench.make(config, 0, *split_sizes(bench.n_train, bench.n_test))["train"]


def bench_padding_free_step_time(quick: bool) -> None:
    """Training forward + backward of a batch of 8 training examples of truthfulqa and of gsm8k (the benches' batch;
    shared start on every side, as the trainer runs): packed in one row without padding (`padding_free`: each row
    attended apart, the default under SDPA) vs padded, and packed under the dense mask alone (what other attentions
    get) for comparison. Interleaved, median of the repeats."""
    from forgetune.data.collator import Collator
    from forgetune.models import embedded_model_dir, load_tokenizer
    from forgetune.scoring import token_logps

    model, name = small_llama(49152, quick)
    model.train()
    tokenizer = load_tokenizer(embedded_model_dir())
    for bench in ("truthfulqa", "gsm8k"):
        line = f"training_step_time_padding_free_vs_padded_{bench}"
        rows = real_training_rows(bench)
        if rows is None:
            print(f"{line} skipped: no ../shared/data/{bench}")
            continue
        batch = Collator(tokenizer.pad_token_id).examples(prompt_completion_examples(rows[:8], tokenizer, bench))
        lengths, width = batch["attention_mask"].sum(1), batch["input_ids"].shape[1]
        start = token_logps.shared_start(batch["input_ids"], batch["attention_mask"])
        start = start if token_logps.sharing_pays(len(lengths), width, start) else 0  # as the trainer decides
        decisions = {rowwise: token_logps._packing_pays(model.config, lengths, start, width, rowwise)
                     for rowwise in (True, False)}

        def step(padding_free: bool, rowwise: bool = True, batch=batch) -> None:
            apart = nullcontext() if rowwise else mock.patch.object(token_logps, "_rowwise_possible", lambda *a: False)
            with apart, mock.patch.object(token_logps, "_packing_pays", lambda *a: padding_free):
                token_logps.training_response_token_ce(model, batch, model, share_prefix=True,
                                                       padding_free=padding_free)[0].mean().backward()

        sides = {"apart": lambda: step(True), "dense": lambda: step(True, rowwise=False),
                 "padded": lambda: step(False)}
        for side in sides.values():  # warm-up
            side()
        repeats = 3 if quick else 5
        times = {side: float(np.median(t)) for side, t in interleaved(sides, repeats).items()}
        report(line, times["apart"] / times["padded"], "report", True,
               f"{name}, 8 {bench} training examples of {int(lengths.min())}-{width} tokens, the first {start} "
               f"shared; rests {int((lengths - start).sum())} tokens packed vs {8 * (width - start)} padded; "
               f"forward + backward, median of {repeats} interleaved: packed, rows attended apart "
               f"{1000 * times['apart']:.0f} ms, packed under the dense mask {1000 * times['dense']:.0f}, padded "
               f"{1000 * times['padded']:.0f}; the cost model packs it {'with' if decisions[True] else 'without'} "
               f"rows apart and {'with' if decisions[False] else 'without'} under the dense mask")


def padded_fraction(lengths: list[int], order: list[int], batch_size: int) -> float:
    """Padding tokens over all tokens when the examples are batched in `order` (padded to each batch's longest)."""
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    pads = sum(max(lengths[j] for j in b) * len(b) - sum(lengths[j] for j in b) for b in batches)
    return pads / (pads + sum(lengths))


def prompt_completion_examples(rows: list[dict], tokenizer, name: str):
    """A benchmark's prompt/completion rows tokenised with the chat template, as `forgetune run` tokenises them."""
    from forgetune.data.formats import Record, tokenize_records

    records = [Record(str(i), [{"role": "user", "content": r["prompt"]},
                               {"role": "assistant", "content": r["completion"]}], name) for i, r in enumerate(rows)]
    return tokenize_records(records, tokenizer, 512, warn=False)[0]


def bench_padding(batch_size: int = 8) -> None:
    """Padded fraction of the training batches on the benchmarks' own data (SmolLM2's tokenizer, chat template and
    config; the benches' batch of 8): the default random order vs --group-by-length (transformers' length-grouped
    sampler), and the random order's batches with `padding_free` (the default: the batches its cost model packs,
    with SmolLM2's config, SDPA's rows attended apart and the shared start the trainer runs, hold no padding)."""
    from transformers import AutoConfig
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from forgetune.bench.data import arith, numwords
    from forgetune.data.collator import Collator
    from forgetune.models import embedded_model_dir, load_tokenizer
    from forgetune.scoring.token_logps import _packing_pays, shared_start, sharing_pays

    tokenizer = load_tokenizer(embedded_model_dir())
    config = AutoConfig.from_pretrained(embedded_model_dir())
    corpora = {"arith": arith.make_arith(400, noise=0.3, seed=0),
               "numwords": numwords.make_numwords(400, 0, 0, 0, wrong_fraction=0.7, seed=0)["train"]}
    for name in ("gsm8k", "truthfulqa"):  # with ../shared/data only
        rows = real_training_rows(name)
        if rows is None:
            print(f"padded_fraction_{name}_grouped_vs_random skipped: no ../shared/data")
        else:
            corpora[name] = rows
    for name, rows in corpora.items():
        examples = prompt_completion_examples(rows, tokenizer, name)
        lengths = examples.lengths.tolist()
        torch.manual_seed(0)
        order = torch.randperm(len(lengths)).tolist()
        random_order = padded_fraction(lengths, order, batch_size)
        grouped = padded_fraction(lengths, list(LengthGroupedSampler(batch_size, lengths=lengths)), batch_size)
        pads = tokens = packed = 0
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for chosen in batches:
            batch = Collator(tokenizer.pad_token_id).examples([examples[i] for i in chosen])
            mask, width = batch["attention_mask"], batch["input_ids"].shape[1]
            start = shared_start(batch["input_ids"], mask)
            start = start if sharing_pays(len(chosen), width, start) else 0  # as the trainer decides
            packs = _packing_pays(config, mask.sum(1), start, width, rowwise=True)  # SDPA: rows apart
            packed += packs
            tokens += int(mask.sum())
            pads += 0 if packs else mask.numel() - int(mask.sum())
        print(f"padded_fraction_{name}_grouped_vs_random ratio={grouped / random_order:.2f} target=report ok  "
              f"(batch {batch_size}: random order {random_order:.1%} padding, grouped {grouped:.1%}; the random "
              f"order with padding_free {pads / (pads + tokens):.1%}: it packs {packed} of the {len(batches)} "
              "batches)")


def bench_compute_bound(quick: bool) -> None:
    """Why a benchmark method takes minutes: one full fine-tuning step of the benches' model on an arith batch (16
    chat examples of ~49 tokens), its matmul FLOP/s (6 x tokens x the parameters every token multiplies: the
    non-embedding ones and the output head, which SmolLM2 ties to its embedding) over the best matmul throughput this
    machine reaches at the model's own layer shapes. Near 1, only fewer tokens (or a faster machine) make a method
    faster: the trainer's shared start (off here, so that every counted token runs) is such a cut."""
    from forgetune.bench.data import arith
    from forgetune.config import TrainConfig
    from forgetune.data.collator import make_features
    from forgetune.models import embedded_model_dir, load_tokenizer
    from forgetune.objectives import build
    from forgetune.trainer import fit

    model, name = small_llama(49152, quick=False)  # the benches' own model: a random small one would say nothing
    model.train()
    tokenizer = load_tokenizer(embedded_model_dir())
    batch, steps = 16, 1 if quick else 4
    rows = arith.make_arith(batch * (steps + 1), noise=0.0, seed=0)
    examples = prompt_completion_examples(rows, tokenizer, "arith")

    def train(n: int) -> float:
        cfg = TrainConfig(objective="sft", batch_size=batch, save_steps=0, logging_steps=n, max_steps=n,
                          learning_rate=5e-5, group_by_length=False,
                          share_prefix=False, padding_free=False)  # every token runs: the FLOPs counted below
        started = time.perf_counter()
        fit(model, tokenizer, make_features(examples[: batch * n]), build("sft"), cfg, Path(tempfile.mkdtemp()),
            key=f"bench-{n}")
        return time.perf_counter() - started

    train(1)  # warm-up
    step = (train(steps + 1) - train(1)) / steps  # the set-up both calls pay cancels
    tokens = int(examples.lengths[:batch].sum())
    head = model.get_output_embeddings().weight.numel() if model.config.tie_word_embeddings else 0
    flops = 6 * tokens * (model.num_parameters(exclude_embeddings=True) + head)
    hidden, inner = model.config.hidden_size, model.config.intermediate_size
    peak = 0.0
    for k, n in ((hidden, inner), (inner, hidden), (hidden, hidden)):
        a, b = torch.randn(tokens, k), torch.randn(k, n)
        peak = max(peak, 2 * tokens * k * n / best_of(lambda a=a, b=b: [a @ b for _ in range(10)], 3) * 10)
    ratio = flops / step / peak
    print(f"train_step_flops_vs_matmul_peak ratio={ratio:.2f} target=report ok  ({name}, full fine-tuning, batch "
          f"{batch} arith examples = {tokens:.0f} tokens: {step:.2f} s a step, {flops / step / 1e9:.0f} GFLOP/s "
          f"in its matmuls vs {peak / 1e9:.0f} GFLOP/s for this machine's best matmul at the model's layer shapes)")


def bench_trl(quick: bool) -> None:
    """forgetune's `sft` vs TRL's SFTTrainer: same model, data, batch, LoRA, optimiser; train tokens per second."""
    try:
        import trl
    except ImportError:
        print("sft_tokens_per_s_vs_trl ratio=nan target=>=1.0 MISS  (TRL not installed: pip install trl)")
        return
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from forgetune.config import ModelConfig, TrainConfig
    from forgetune.data.collator import make_features
    from forgetune.data.formats import Record, tokenize_records
    from forgetune.models import embedded_model_dir, load_tokenizer, load_trainable
    from forgetune.objectives import build
    from forgetune.trainer import fit
    from tests_helpers import TOKENIZER_DIR

    steps, batch, repeats = (4, 4, 3) if quick else (4, 8, 3)
    name = "random Llama 128x2, vocab 49152" if quick else "SmolLM2-135M (49k vocabulary)"
    if quick:
        model_dir = Path(tempfile.mkdtemp()) / "model"
        model, _ = small_llama(49152, True)
        tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
        model.resize_token_embeddings(len(tokenizer))
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    else:
        model_dir = embedded_model_dir()
    tokenizer = load_tokenizer(model_dir)
    rng = np.random.default_rng(0)
    rows = [{"prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}],
             "completion": [{"role": "assistant", "content": f"The answer is {a + b}. " * int(rng.integers(1, 6))}]}
            for a, b in rng.integers(10, 99, (steps * batch, 2))]
    records = [Record(f"r{i}", r["prompt"] + r["completion"], f"row {i}") for i, r in enumerate(rows)]
    examples, _ = tokenize_records(records, tokenizer, max_length=512)
    tokens = sum(len(ex.input_ids) for ex in examples)
    lora = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear", "lora_dropout": 0.0}
    common = {"learning_rate": 1e-4, "max_steps": steps, "seed": 0}

    def ours() -> float:
        model = load_trainable(model_dir, ModelConfig(model=str(model_dir), lora=True, lora_dropout=0.0))
        cfg = TrainConfig(objective="sft", batch_size=batch, save_steps=0, logging_steps=steps, **common)
        started = time.perf_counter()
        fit(model, tokenizer, make_features(examples), build("sft"), cfg, Path(tempfile.mkdtemp()), key="bench")
        return time.perf_counter() - started

    def trl_args(padding_free: bool = False) -> trl.SFTConfig:
        """Matched to forgetune's side: float32 (TRL defaults to bf16 autocast), no gradient checkpointing (TRL
        defaults to it), loss on the completion only, the same steps, batch, optimiser and logging. `padding_free`:
        TRL's own packed rows (off by default there), run too, so that the baseline is TRL's faster setting."""
        return trl.SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, report_to="none",
                             save_strategy="no", logging_steps=steps, use_cpu=not torch.cuda.is_available(),
                             bf16=False, gradient_checkpointing=False, completion_only_loss=True, disable_tqdm=True,
                             # TRL refuses a max_length it cannot enforce when padding-free; the rows are far under it
                             max_length=None if padding_free else 512, padding_free=padding_free, **common)

    def scored_rows() -> Dataset:
        """TRL's tokens with a forget-npo partition's columns: 30 % of the completion tokens negative (random)."""
        from forgetune.integrations.trl import trl_tokenize

        generator = np.random.default_rng(1)

        def columns(row):
            trained = np.asarray(row["labels"]) != -100
            polarity = np.where(generator.random(trained.size) < 0.3, -1, 1) * trained
            return {"polarity": polarity.tolist(), "base_ce": (2.0 * trained).tolist()}

        return trl_tokenize(Dataset.from_list(rows), tokenizer, trl_args()).map(columns)

    def theirs(objective: str | None = None, padding_free: bool = False) -> float:
        from transformers import AutoModelForCausalLM

        from forgetune.integrations.trl import ForgetSFTTrainer

        model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(task_type="CAUSAL_LM",
                                                                                           **lora))
        if objective is None:
            trainer = trl.SFTTrainer(model=model, args=trl_args(padding_free), train_dataset=Dataset.from_list(rows),
                                     processing_class=tokenizer)
        else:
            trainer = ForgetSFTTrainer(model=model, args=trl_args(), train_dataset=scored, processing_class=tokenizer,
                                       objective=objective)
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started

    scored = scored_rows()
    runs: dict[str, list[float]] = {"ours": [], "trl": [], "trl_packed": [], "forget": []}
    for _ in range(repeats):  # interleaved (A B C D A B C D ...): every side sees the same machine state; medians
        runs["ours"].append(ours())
        runs["trl"].append(theirs())
        runs["trl_packed"].append(theirs(padding_free=True))
        runs["forget"].append(theirs("forget-npo"))
    t_ours, t_plain, t_packed, t_forget = (float(np.median(runs[k])) for k in ("ours", "trl", "trl_packed", "forget"))
    t_trl = min(t_plain, t_packed)  # TRL's faster setting is the baseline
    settings = (f"{name}, float32, no gradient checkpointing, LoRA r16 all-linear, {steps} steps x batch {batch}, "
                f"{tokens} tokens, median of {repeats} interleaved runs")
    ratio = t_trl / t_ours  # tokens/s ratio: same tokens, so the inverse time ratio
    report("sft_tokens_per_s_vs_trl", ratio, ">=1.0", ratio >= 1.0,
           f"{settings}: forgetune sft (its defaults: chunked head, a batch's common start run once, padding-free "
           f"where it pays) {tokens / t_ours:.0f} tok/s, TRL {trl.__version__} SFTTrainer {tokens / t_trl:.0f} tok/s "
           f"(its faster setting: padded {tokens / t_plain:.0f}, padding_free {tokens / t_packed:.0f})")
    ratio = t_plain / t_forget  # the same trainer and padding: what the forgetting term costs inside TRL
    report("forget_in_trl_tokens_per_s_vs_sft", ratio, ">=0.9", ratio >= 0.9,
           f"{settings}: ForgetSFTTrainer forget-npo {tokens / t_forget:.0f} tok/s, SFTTrainer (padded) "
           f"{tokens / t_plain:.0f} tok/s")


def bench_lm_eval(quick: bool) -> None:
    """lm-evaluation-harness multiple choice: forgetune's `SharedContextLM` (each context once) vs the harness's own
    `HFLM` (each context again with every choice), the same model and log-likelihood requests, interleaved."""
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from forgetune.integrations.lm_eval import SharedContextLM
    from tests_helpers import TOKENIZER_DIR

    vocab, batch_size = 49152, 64
    model, name = small_llama(vocab, quick)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    rng = np.random.default_rng(0)
    requests = []  # truthfulqa's shape: 150 questions of 10-60 tokens, 2-8 choices of 3-30 tokens
    for q in range(60 if quick else 150):
        context = rng.integers(3, vocab, int(rng.integers(10, 60))).tolist()
        for c in range(int(rng.integers(2, 9))):
            requests.append(((f"q{q}", f"c{c}"), context, rng.integers(3, vocab, int(rng.integers(3, 30))).tolist()))
    sides = {cls.__name__: cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
             for cls in (HFLM, SharedContextLM)}
    answers = {}

    def run(side: str):
        return lambda: answers.__setitem__(side, sides[side]._loglikelihood_tokens(requests, disable_tqdm=True))

    times = interleaved({side: run(side) for side in sides}, 2)
    ours, theirs = min(times["SharedContextLM"]), min(times["HFLM"])
    gap = max(abs(a[0] - b[0]) for a, b in zip(answers["SharedContextLM"], answers["HFLM"], strict=True))
    same_greedy = [a[1] for a in answers["SharedContextLM"]] == [b[1] for b in answers["HFLM"]]
    contexts = {tuple(r[1]) for r in requests}
    report("lm_eval_multiple_choice_shared_context_vs_hflm", ours / theirs, "report", same_greedy and gap < 1e-3,
           f"{name}, {len(requests)} requests of {len(contexts)} contexts, batch {batch_size}: SharedContextLM "
           f"{ours:.1f} s, HFLM {theirs:.1f} s; log-likelihoods within {gap:.1e}, greedy flags "
           f"{'equal' if same_greedy else 'DIFFER'}; MISS if they differ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (under a minute)")
    args = parser.parse_args()
    bench_scoring(args.quick)
    bench_scoring_memory(args.quick)
    bench_training_memory(args.quick)
    bench_chunked_step_time(args.quick)
    bench_padding_free_step_time(args.quick)
    bench_partition(10**7 if args.quick else 10**8, 10**5 if args.quick else 10**6)
    bench_step(5 if args.quick else 20)
    bench_padding()
    bench_compute_bound(args.quick)
    bench_trl(args.quick)
    bench_lm_eval(args.quick)


if __name__ == "__main__":
    main()

"""GPU numbers at a real size, one command for a lent device (about 5 minutes on one H200; nothing is downloaded):

    python benchmarks/gpu.py --json docs/gpu.json     # a randomly initialised Llama-3.2-1B (128k vocabulary), bf16
    python benchmarks/gpu.py --smoke                  # a tiny config on the CPU: checks the script itself

Prints `NAME ratio=R target=T ok|MISS (detail)` lines like benchmarks/run.py: scoring tokens/s vs the raw forward,
a forget step vs an sft step, training peak memory with the chunked head vs the full logits, and training tokens/s at
the largest batch of 2048-token sequences that fits.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from forgetune.objectives import build
from forgetune.scoring.token_logps import model_response_token_ce, response_token_ce, training_response_token_ce
from forgetune.trainer import flat_token_batch

# meta-llama/Llama-3.2-1B's config.json (architecture only; the weights are random).
LLAMA_1B = {"vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
            "rope_theta": 500000.0, "tie_word_embeddings": True, "rms_norm_eps": 1e-5}
SMOKE = {"vocab_size": 1024, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True}

results: dict[str, dict] = {}


def report(name: str, ratio: float, target: str, ok: bool | None, detail: str) -> None:
    verdict = "ok" if ok or ok is None else "MISS"
    results[name] = {"ratio": ratio, "target": target, "met": ok, "detail": detail}
    print(f"{name} ratio={ratio:.3f} target={target} {verdict}  ({detail})", flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeat: int = 3) -> float:
    """Median seconds of `repeat` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def batch_of(rows: int, length: int, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random ids; the first quarter of each row is the prompt (no loss), 30 % of the response tokens negative, a
    base CE of 2 on every token (forget-npo reads it)."""
    generator = torch.Generator().manual_seed(rows * length)
    ids = torch.randint(3, vocab, (rows, length), generator=generator)
    labels = ids.clone()
    labels[:, : length // 4] = -100
    polarity = torch.where(torch.rand(rows, length, generator=generator) < 0.3, -1, 1)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "polarity": polarity,
             "base_ce": torch.full((rows, length), 2.0)}
    return {k: v.to(device) for k, v in batch.items()}


def bench_scoring(model, batch, device) -> None:
    tokens = batch["input_ids"].numel()

    @torch.inference_mode()
    def raw():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def ours():
        model_response_token_ce(model, batch["input_ids"], batch["attention_mask"], batch["labels"])

    t_raw, t_ours = timed(raw, device), timed(ours, device)
    shape = tuple(batch["input_ids"].shape)
    report("scoring_throughput_vs_raw_forward", t_raw / t_ours, ">=0.9", t_raw / t_ours >= 0.9,
           f"{tokens / t_ours:.0f} tok/s vs raw forward {tokens / t_raw:.0f} tok/s, batch {shape}")


def train_step(model, batch, objective: str, chunked: bool = True) -> None:
    if chunked:
        ce, _ = training_response_token_ce(model, batch, model)
    else:
        ce = response_token_ce(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                               batch["labels"])
    loss, _ = build(objective)(ce, flat_token_batch(batch), 0.5)
    loss.backward()
    model.zero_grad(set_to_none=True)


def bench_step(model, batch, device) -> None:
    t_sft = timed(lambda: train_step(model, batch, "sft"), device)
    t_forget = timed(lambda: train_step(model, batch, "forget-npo"), device)
    report("forget_step_vs_sft_step", t_forget / t_sft, "<=1.03", t_forget / t_sft <= 1.03,
           f"forward + backward, batch {tuple(batch['input_ids'].shape)}: forget-npo {1000 * t_forget:.0f} ms, "
           f"sft {1000 * t_sft:.0f} ms")


def peak_memory(fn, device) -> float:
    """Peak allocated GB of one call (CUDA only: the CPU smoke run reports 0)."""
    if device.type != "cuda":
        fn()
        return 0.0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    return torch.cuda.max_memory_allocated() / 1e9


def bench_memory(model, batch, device) -> None:
    full = peak_memory(lambda: train_step(model, batch, "sft", chunked=False), device)
    chunked = peak_memory(lambda: train_step(model, batch, "sft"), device)
    t_full = timed(lambda: train_step(model, batch, "sft", chunked=False), device, repeat=2)
    t_chunked = timed(lambda: train_step(model, batch, "sft"), device, repeat=2)
    ratio = chunked / full if full else float("nan")
    report("training_peak_memory_chunked_vs_full_logits", ratio, "<=0.5", ratio <= 0.5 if full else None,
           f"batch {tuple(batch['input_ids'].shape)}: chunked {chunked:.1f} GB, full logits {full:.1f} GB")
    report("training_step_time_chunked_vs_full_logits", t_chunked / t_full, "<=1.10", t_chunked / t_full <= 1.10,
           f"chunked {1000 * t_chunked:.0f} ms, full logits {1000 * t_full:.0f} ms")


def bench_largest_batch(model, vocab: int, length: int, device, rows: tuple[int, ...]) -> None:
    """Training tokens/s (forget-npo, chunked head, gradient checkpointing) at the largest batch that fits."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    best = None
    for n in rows:
        batch = batch_of(n, length, vocab, device)
        try:
            seconds = timed(lambda b=batch: train_step(model, b, "forget-npo"), device, repeat=2)
        except torch.OutOfMemoryError:
            break
        finally:
            del batch
            if device.type == "cuda":
                torch.cuda.empty_cache()
        best = (n, seconds)
    model.gradient_checkpointing_disable()
    if best is None:
        report("training_tokens_per_s_largest_batch", float("nan"), "report", None, "no batch fitted")
        return
    n, seconds = best
    report("training_tokens_per_s_largest_batch", n * length / seconds, "report", None,
           f"{n} x {length} tokens per step with gradient checkpointing, forget-npo: {seconds:.2f} s per step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny config on the CPU (checks the script)")
    parser.add_argument("--json", type=Path, help="also write the lines as JSON here")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.smoke:
        parser.error("no CUDA device: this script measures a GPU (--smoke checks it on the CPU)")
    config = LlamaConfig(**(SMOKE if args.smoke else LLAMA_1B))
    dtype = torch.float32 if args.smoke else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    length = 128 if args.smoke else 2048
    batch = batch_of(2 if args.smoke else 8, length, config.vocab_size, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke)"
    print(f"# {name}, Llama-3.2-1B architecture (random weights), {dtype}, torch {torch.__version__}", flush=True)
    bench_scoring(model.eval(), batch, device)
    model.train()
    bench_step(model, batch, device)
    bench_memory(model, batch, device)
    bench_largest_batch(model, config.vocab_size, length, device, (2, 4) if args.smoke else (8, 16, 32, 64, 128))
    if args.json:
        args.json.write_text(json.dumps({"device": name, "dtype": str(dtype), "results": results}, indent=1))


if __name__ == "__main__":
    main()

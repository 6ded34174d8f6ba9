"""Membership inference and forget quality: does an unlearned model still treat the forget set as training data?

Every membership score is oriented so that HIGHER = more likely a training member; `mia_auc` is then the AUROC of
telling members from non-members, 0.5 when the model treats them alike (the goal of unlearning) and 1.0 when it
still separates them perfectly. Only response tokens are scored, with `target_mask` semantics: the token at position
t is predicted by the logits at t - 1 and position 0 is never scored.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import ks_2samp

from forgetune.data.collator import Collator
from forgetune.data.corpus import Example, example_lengths
from forgetune.metrics.detection import auroc
from forgetune.scoring.token_logps import target_mask

HIGHER_IS_BETTER = True  # forget_quality
MIA_AUC_TARGET = 0.5  # mia_*: neither direction is better; an AUROC below 0.5 also tells members apart
SCORES = ("loss", "zlib", "min_k", "min_k_plus_plus")
_SIGMA_EPS = 1e-8  # a one-hot prediction has sigma 0; Min-K%++ would divide by it


def _row_stats(rows: torch.Tensor, targets: torch.Tensor, chunk_rows: int = 4096) -> torch.Tensor:
    """(N, 3) float32 [logp, mu, sigma] of (N, V) logit rows, `chunk_rows` at a time so fp32 copies stay bounded.

    sigma is computed centred, sqrt(sum_v p (log p - mu)^2), which equals sqrt(E[log p^2] - mu^2) but cannot go
    negative through cancellation. -inf logits (masked vocabulary) give p = 0 and would make 0 * -inf = NaN, so
    their log-probs are zeroed in the sums where p already removes them.
    """
    out = []
    for i in range(0, rows.shape[0], chunk_rows):
        logp = torch.log_softmax(rows[i : i + chunk_rows].float(), dim=-1)
        p = logp.exp()
        finite = logp.nan_to_num(neginf=0.0)
        mu = (p * finite).sum(-1)
        sigma = (p * (finite - mu[:, None]).square()).sum(-1).sqrt()
        out.append(torch.stack([logp.gather(-1, targets[i : i + chunk_rows, None])[:, 0], mu, sigma], dim=-1))
    return torch.cat(out) if out else rows.new_zeros((0, 3), dtype=torch.float32)


@torch.inference_mode()
def token_stats(model: torch.nn.Module, examples: Sequence[Example], pad_token_id: int,
                batch_size: int = 16) -> list[dict[str, np.ndarray]]:
    """Per response token of each example (in `examples` order), float64 arrays of the model's view of it.

    "logp": log p(x_t); "mu": sum_v p(v) log p(v), the expected log-prob under the model's own distribution at that
    position (minus its entropy); "sigma": the standard deviation of log p(v) under that distribution. mu and sigma
    are what Min-K%++ calibrates logp with. Examples go longest first in batches of similar length (little padding
    compute); only the response rows of the logits are selected and cast to fp32.
    """
    collate = Collator(pad_token_id)
    device = next(model.parameters()).device
    model.eval()
    order = np.argsort(-example_lengths(examples), kind="stable")
    out: dict[int, dict[str, np.ndarray]] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate.examples(examples[int(i)] for i in chunk)
        input_ids, attention_mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        mask = target_mask(labels)
        stats = _row_stats(logits[:, :-1][mask[:, 1:]], labels[mask]).double().cpu().numpy().T.copy()  # (3, N)
        pos = 0
        for row, i in enumerate(chunk):
            n = int(mask[row].sum())
            out[int(i)] = dict(zip(("logp", "mu", "sigma"), stats[:, pos : pos + n], strict=True))
            pos += n
    return [out[i] for i in range(len(examples))]


def example_losses(stats: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    """Per-example mean NLL (-mean logp) in nats: the input of `forget_quality`."""
    return np.array([-_logp(s).mean() for s in stats], dtype=np.float64)


def _logp(s: dict[str, np.ndarray]) -> np.ndarray:
    logp = np.asarray(s["logp"], dtype=np.float64)
    if logp.size == 0:
        raise ValueError("an example with no scored response token has no membership score")
    return logp


def _mean_lowest(values: np.ndarray, k: float) -> float:
    """Mean of the ceil(k * n) lowest values: at least one token, however short the example."""
    m = math.ceil(round(k * values.size, 9))  # round: 0.7 * 10 = 7.000000000000001 must stay 7
    return float(np.partition(values, m - 1)[:m].mean())


def membership_scores(stats: Sequence[dict[str, np.ndarray]], texts: Sequence[str],
                      k: float = 0.4) -> dict[str, np.ndarray]:
    """One score per example under each attack of `SCORES`, HIGHER = more likely a training member.

    "loss": mean logp (Yeom et al. 2018: members have lower loss). "zlib": -NLL / zlib-compressed byte length of the
    response text (Carlini et al. 2021), which discounts text that is easy for any model (repetitive, boilerplate).
    "min_k": mean of the lowest k-fraction of logp (Shi et al. 2024, Min-K% Prob), scoring only the surprising
    tokens where members and non-members differ most. "min_k_plus_plus": the same over (logp - mu) / sigma (Zhang
    et al. 2024, Min-K%++), each token calibrated by how peaked the model is at that position. k = 0.4 (40%) is this
    project's default; Shi et al. and MIMIR use 0.2 and the Min-K%++ authors sweep 0.1 .. 1.0. The count is
    ceil(k * n), so every example keeps at least one token (the reference code's int() gives none for short texts).
    texts[i] is example i's response text, the text the scored tokens spell.
    """
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k}")
    if len(stats) != len(texts):
        raise ValueError(f"{len(stats)} examples' stats for {len(texts)} texts")
    scores: dict[str, list[float]] = {name: [] for name in SCORES}
    for s, text in zip(stats, texts, strict=True):
        logp = _logp(s)
        calibrated = (logp - s["mu"]) / np.maximum(s["sigma"], _SIGMA_EPS)
        scores["loss"].append(float(logp.mean()))
        scores["zlib"].append(float(logp.sum()) / len(zlib.compress(text.encode("utf-8"))))
        scores["min_k"].append(_mean_lowest(logp, k))
        scores["min_k_plus_plus"].append(_mean_lowest(calibrated, k))
    return {name: np.array(values, dtype=np.float64) for name, values in scores.items()}


def mia_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """AUROC that a member scores higher than a non-member (ties count half): 0.5 = indistinguishable."""
    member_scores = np.asarray(member_scores, dtype=np.float64).reshape(-1)
    nonmember_scores = np.asarray(nonmember_scores, dtype=np.float64).reshape(-1)
    labels = np.concatenate([np.ones(member_scores.size, bool), np.zeros(nonmember_scores.size, bool)])
    return auroc(np.concatenate([member_scores, nonmember_scores]), labels)


def mia_report(member_stats: Sequence[dict[str, np.ndarray]], member_texts: Sequence[str],
               nonmember_stats: Sequence[dict[str, np.ndarray]], nonmember_texts: Sequence[str],
               k: float = 0.4) -> dict[str, float]:
    """{"mia_<attack>": AUROC} for every attack of `SCORES`, members against non-members."""
    members = membership_scores(member_stats, member_texts, k)
    nonmembers = membership_scores(nonmember_stats, nonmember_texts, k)
    return {f"mia_{name}": mia_auc(members[name], nonmembers[name]) for name in SCORES}


def forget_quality(unlearned_losses: np.ndarray, never_seen_losses: np.ndarray) -> float:
    """p-value of the two-sided two-sample Kolmogorov-Smirnov test between two per-example loss samples.

    unlearned_losses: the forget set's per-example mean NLL (`example_losses`) under the unlearned model;
    never_seen_losses: the same under a model that never saw the forget set. High (near 1) = the unlearned model's
    losses are indistinguishable from never having trained on the data; low = the forget set still stands out. This
    is how TOFU's forget quality uses the KS test, on per-example losses rather than its truth ratios.
    """
    a = np.asarray(unlearned_losses, dtype=np.float64).reshape(-1)
    b = np.asarray(never_seen_losses, dtype=np.float64).reshape(-1)
    if a.size == 0 or b.size == 0:
        raise ValueError(f"forget quality needs two non-empty samples, got {a.size} and {b.size}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("NaN loss in a forget-quality sample")
    return float(ks_2samp(a, b, alternative="two-sided").pvalue)

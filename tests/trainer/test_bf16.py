"""--bf16: mixed precision on any device (float32 weights and optimiser, matmuls in bfloat16 autocast), the same
losses as float32 up to bfloat16 rounding."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from conftest import build_tiny_llama
from forgetune import objectives
from forgetune.bench.data.arith import make_arith
from forgetune.config import TrainConfig
from forgetune.data.collator import make_features
from forgetune.data.formats import load_examples
from forgetune.trainer import fit
from tests_helpers import write_jsonl


class MatmulDtypes(TrainerCallback):
    """The dtype of a decoder projection's output during training: bfloat16 under autocast, else float32."""

    def __init__(self):
        self.dtypes: set[torch.dtype] = set()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        proj = model.model.layers[0].mlp.down_proj
        proj.register_forward_hook(lambda module, args, out: self.dtypes.add(out.dtype))


@pytest.mark.parametrize("bf16", [False, True])
def test_bf16_autocasts_matmuls_and_keeps_float32_weights(tokenizer, tmp_path, bf16):
    examples, _ = load_examples(write_jsonl(tmp_path / "a.jsonl", make_arith(16, noise=0.0, seed=1)), tokenizer)
    losses = {}
    for precision in sorted({False, bf16}):
        model = build_tiny_llama(len(tokenizer))
        seen = MatmulDtypes()
        cfg = TrainConfig(batch_size=8, max_steps=2, logging_steps=1, learning_rate=1e-3, bf16=precision)
        _, history, _ = fit(model, tokenizer, make_features(examples), objectives.build("sft"), cfg,
                            tmp_path / f"bf16-{precision}", key="k", callbacks=[seen])
        assert seen.dtypes == {torch.bfloat16 if precision else torch.float32}
        assert {p.dtype for p in model.parameters()} == {torch.float32}  # the weights stay float32
        losses[precision] = [h["loss"] for h in history if "loss" in h]
    assert len(losses[bf16]) == 2
    assert losses[bf16] == pytest.approx(losses[False], rel=0.02)  # bfloat16 keeps 8 bits of mantissa

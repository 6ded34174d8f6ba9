"""This process's place under `accelerate launch` (DDP / FSDP / DeepSpeed on GPUs, gloo on CPUs)."""

from __future__ import annotations

import torch
from accelerate import PartialState


def process_state() -> PartialState:
    """accelerate's shared process state, created as a CPU state on machines without a GPU.

    accelerate forms a gloo process group only for a state created with cpu=True; created plainly on a CPU machine,
    each launched process believes it is alone and every one of them would redo (and rewrite) the whole job.
    """
    return PartialState(cpu=not torch.cuda.is_available())

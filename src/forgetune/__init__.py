"""forgetune: token-level forgetting for LLM fine-tuning (arXiv 2508.04329) and machine unlearning.

Python API: `partition_tokens` (pure numpy), and the stages over a run directory::

    from forgetune import config, pipeline
    cfg = config.resolve(flags={"data": "train.jsonl", "output": "runs/x", "objective": "forget"})
    run = pipeline.open_run(cfg)
    pipeline.run_all(run)
"""

from forgetune.errors import ForgetuneError
from forgetune.scoring.partition import partition_polarity, partition_tokens

__version__ = "0.1.0"
__all__ = ["ForgetuneError", "partition_polarity", "partition_tokens", "__version__"]

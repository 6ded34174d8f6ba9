"""forgetune: token-level forgetting for LLM fine-tuning (arXiv 2508.04329) and machine unlearning.

Python API: `partition_tokens` (pure numpy), and the stages over a run directory::

    from forgetune import config, pipeline
    cfg = config.resolve(flags={"data": "train.jsonl", "output": "runs/x", "objective": "forget"})
    run = pipeline.open_run(cfg)
    pipeline.run_all(run)
"""

import os

# Nothing is ever fetched: every model and dataset path is local. Set before any Hugging Face library is imported,
# since they read these once, at import.
for _flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_flag, "1")

from forgetune.errors import ForgetuneError  # noqa: E402
from forgetune.scoring.partition import partition_polarity, partition_tokens  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ForgetuneError", "partition_polarity", "partition_tokens", "__version__"]

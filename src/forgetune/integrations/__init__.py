"""forgetune's machinery inside other libraries: forgetting in TRL's training scripts (`trl`), evaluation through
lm-evaluation-harness (`lm_eval`). Each module imports its library: import one only where that library is installed
(`pip install forgetune[trl]`, `forgetune[lmeval]`)."""

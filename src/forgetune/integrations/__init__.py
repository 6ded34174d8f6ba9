"""Forgetting inside other libraries' training scripts (TRL). Each module imports its library: import one only where
that library is installed (`pip install forgetune[trl]`)."""

"""Pure schedule functions (tested on their own)."""


def linear_ramp(progress: float, start: float, end: float) -> float:
    """lambda(t) = start + (end - start) * t / T, with progress = t / T clamped to [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    return start + (end - start) * progress

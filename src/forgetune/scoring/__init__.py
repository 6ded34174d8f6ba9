"""Per-token scores: CE_base - CE_ref on every response token, and the global positive/negative partition."""

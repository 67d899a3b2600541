"""Data stage: raw `.dat` files to a validated, imputed table, per-subject shards, folds,
feature statistics and model windows. Nothing here imports torch at module level."""

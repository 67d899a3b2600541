"""Lifecycle stage: MLflow tracking, the champion in the registry, serving and timelines."""

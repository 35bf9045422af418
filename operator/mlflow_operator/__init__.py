"""Kopf operator that deploys authenticated MLflow tracking servers."""

"""MLflow auth plugin: Kubernetes ServiceAccount tokens validated by TokenReview."""

"""The operator's pure core: no kopf, kubernetes or prometheus_client (import-linter holds it)."""

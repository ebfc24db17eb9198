"""The FlashInfer phase: tune on rank 0, share with every rank (imports the real flashinfer lazily)."""

"""Pure planning: config.json -> the work (no torch, triton or flashinfer; import-linter holds it)."""

"""Test-only code kept out of the wheels: the PyTorch reference kernel, a server-side-apply model."""

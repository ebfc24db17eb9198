"""Kernels the warmer compiles. Importing this package is free; each module imports triton
itself, so the warmer stays stdlib-only until it actually compiles."""

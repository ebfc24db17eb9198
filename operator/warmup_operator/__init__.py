"""The kernel-warmup operator: injects the warmer init container into inference workloads
selected by KernelWarmup resources, and reports the warmups the Pods ran."""

__version__ = "0.1.0"

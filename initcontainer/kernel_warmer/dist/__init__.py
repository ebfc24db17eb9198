"""One payload made on rank 0, identical on every rank: world, rendezvous, share, workers."""

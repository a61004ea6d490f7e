"""Crossbatch training: data, batching, the training loop."""

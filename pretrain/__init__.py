"""Transformer models, the shared training loop and the three trainer entry points."""

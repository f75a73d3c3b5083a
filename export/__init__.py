"""Checkpoint exports (NPZ 8-mile layout, torch, HF) and their loaders."""

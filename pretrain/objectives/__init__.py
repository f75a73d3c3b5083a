"""Objectives: nn.Modules that own a model and turn a batch into loss terms (see docs/ARCHITECTURE.md)."""

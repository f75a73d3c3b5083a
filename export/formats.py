"""The export formats and the file (or folder) each writes in an export directory. Torch-free on purpose:
`submit export` validates formats on a laptop that has no reason to import torch."""
from __future__ import annotations

OUTPUT_NAMES = {"npz": "model.npz", "torch": "model.pt", "hf": "hf", "sentence-transformers": "sentence-transformers"}
FORMATS = tuple(OUTPUT_NAMES)

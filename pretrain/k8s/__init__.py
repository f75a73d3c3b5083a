"""Kubernetes: the PyTorchJob this project runs (manifest), the operator's admission rules (rules),
the API calls that create and follow it (cluster) and how its status reads (status)."""

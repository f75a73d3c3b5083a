"""mead-layers 2.4.2 (the reference for the 8-mile layouts), importable on Python 3.11.

It still uses the aliases `collections.Sequence` etc. that Python 3.10 removed, so they are restored from
collections.abc before its modules are imported.
"""
import collections
import collections.abc
import importlib

for _name in ("Sequence", "Mapping", "MappingView"):
    setattr(collections, _name, getattr(collections.abc, _name))

lm = importlib.import_module("baseline.pytorch.lm.model")
embeddings = importlib.import_module("eight_mile.pytorch.embeddings")
layers = importlib.import_module("eight_mile.pytorch.layers")
serialize = importlib.import_module("eight_mile.pytorch.serialize")
seq2seq_encoders = importlib.import_module("baseline.pytorch.seq2seq.encoders")  # registers mead's transformer
seq2seq_decoders = importlib.import_module("baseline.pytorch.seq2seq.decoders")  # encoder and decoder
seq2seq = importlib.import_module("baseline.pytorch.seq2seq.model")

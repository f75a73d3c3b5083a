"""Tokenizers, vocab learning, binary token shards and out-of-core readers for pretraining."""

"""Embedders (slot ``embedder``): what turns a batch's inputs into token vectors."""

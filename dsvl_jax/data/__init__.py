"""Data: record schema, the embedded corpus, importers, tfds/ArrayRecord builders, tokenizers, the chat
template, and the grain input pipeline (pipeline.py) with mixture and packing. See WORKSPACE.md.

Nothing is re-exported here so that `python -m dsvl_jax.data` answers --help before jax loads; import
the modules (`from dsvl_jax.data import pipeline`).
"""

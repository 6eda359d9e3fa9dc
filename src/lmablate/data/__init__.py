"""Corpora: presets and local/hub sources, the BPE tokenizer, the HDF5 token store."""

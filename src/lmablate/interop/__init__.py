"""Hugging Face interop: import Trainer runs, export lmablate models."""

"""What the Snakefile and its rule scripts call: one function per step."""

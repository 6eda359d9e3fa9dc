"""The study: config dataclasses, the YAML loader, sweeps, run IDs and the plan."""

"""Plumbing that imports nothing of the project: precision, processes and devices, collectives,
checkpoint files, run outputs, optimisers and schedules. Everything above it (``datasets/``,
``models/``, ``losses/``, ``engine/``, the entry scripts) may import it; it imports none of them."""

"""The fault suite: `python -m faults` (see faults/run.py and docs/reliability.md)."""

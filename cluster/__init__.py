"""Serving past one machine: an ingress that only signals, and generation replicas on Ray Serve (docs/serving.md).

This room sits above `app/`: it imports `app`, never the other way round, and only `run.py serve
--ray` imports it, so the single-process `python run.py` runs without Ray installed.
"""

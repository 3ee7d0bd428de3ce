"""Camera math, input -> pose integration, trajectories and the model's camera conditioning.

Imports neither `model`, `streaming` nor `app`. See `controls.camera` for the shared conventions.
"""

"""Low-level ops of the model: the frame-wise gated delta rule (`model.ops.gdn`)."""

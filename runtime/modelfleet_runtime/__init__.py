"""modelfleet runtime: serves a PyTorch model over the Open Inference Protocol v2."""

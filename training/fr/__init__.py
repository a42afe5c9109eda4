"""Face-recognition training and verification evaluation (insightface-compatible)."""

"""Identity-conditioned generation: ID→face and ID+text pipelines, inpainting, presets."""

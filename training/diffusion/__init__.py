"""Diffusion training: LoRA, identity adapters and ControlNets on one shared loop."""

"""facegen.adapters: learned modules that turn an identity into diffusion conditioning."""

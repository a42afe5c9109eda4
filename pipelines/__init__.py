"""facegen.pipelines: diffusion pipelines and the synthetic dataset generator."""

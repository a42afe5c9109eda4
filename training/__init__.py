"""facegen.training: Accelerate training loops and face-recognition evaluation."""

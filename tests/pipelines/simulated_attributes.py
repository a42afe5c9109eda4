"""A simulated attribute model on identity vectors, with known ground truth.

Gender is the sign of the projection on one fixed direction; age is ``40 + 15·z`` years where
``z`` is the projection on another, scaled by ``sqrt(dim)`` (about standard normal for
uniformly sampled unit vectors), so the age bands <30 / 30-49 / 50+ hold about 25 / 50 / 25 %
of uniform candidates.
"""

from __future__ import annotations

import math

import numpy as np

from facegen.attributes import AttributeEstimate, AttributeSpec, VectorAttributeEstimator


class SimulatedAttributes(VectorAttributeEstimator):
    name = "simulated"
    attributes = (
        AttributeSpec("gender", "categorical", ("female", "male")),
        AttributeSpec("age", "numeric", unit="years"),
    )

    def __init__(self, dim: int, encoder_id: str) -> None:
        self.dim, self.encoder_id = dim, encoder_id
        rng = np.random.default_rng(123)
        basis = np.linalg.qr(rng.standard_normal((dim, 2)))[0]
        self.u, self.w = basis[:, 0], basis[:, 1]
        self.calls = 0

    def predict(self, vectors: np.ndarray) -> list[AttributeEstimate]:
        v = np.asarray(vectors, np.float64)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"vectors must be (N, {self.dim}), got {v.shape}")
        self.calls += len(v)
        g = v @ self.u
        age = 40.0 + 15.0 * (v @ self.w) * math.sqrt(self.dim)
        return [
            AttributeEstimate(
                {"gender": "male" if gi > 0 else "female", "age": float(ai)}, estimator=self.name
            )
            for gi, ai in zip(g, age, strict=True)
        ]

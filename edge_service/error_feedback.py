"""Error feedback on quantised gradients: what one batch's quantisation lost is added to the
next batch's gradient before it is quantised, so the errors do not add up over a round.

One per device session (its round): the residual has the shape of that device's gradients; a
batch of another shape (the round's last, shorter one) starts afresh.
"""

from __future__ import annotations

import numpy as np

from schemas.quantization import QuantFormat, QuantizedTensor, quantize


class ErrorFeedback:
    """Quantises a stream of gradients in ``fmt``, carrying each one's error to the next."""

    def __init__(self, fmt: QuantFormat) -> None:
        self.format: QuantFormat = fmt
        self.residual: np.ndarray | None = None

    def quantize(self, grad: np.ndarray) -> QuantizedTensor:
        """``grad`` plus the last residual, quantised; the new residual is what that lost."""
        corrected = np.asarray(grad, dtype=np.float32)
        if self.residual is not None and self.residual.shape == corrected.shape:
            corrected = corrected + self.residual
        quantised = quantize(corrected, self.format)
        self.residual = corrected - quantised.dequantize()
        return quantised

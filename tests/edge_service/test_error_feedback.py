"""Error feedback on quantised gradients: the error of one batch is carried into the next, so
the sum of what was sent tracks the sum of the true gradients within one quantisation step."""

from __future__ import annotations

import numpy as np
import pytest

from edge_service.error_feedback import ErrorFeedback
from schemas.quantization import quantize


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_the_residual_is_what_quantisation_lost(fmt):
    grad = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)
    feedback = ErrorFeedback(fmt)
    sent = feedback.quantize(grad)
    # The first batch has no residual to add: exactly plain quantisation.
    np.testing.assert_array_equal(sent.codes(), quantize(grad, fmt).codes())
    assert feedback.residual is not None
    np.testing.assert_allclose(feedback.residual, grad - sent.dequantize(), atol=1e-7)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_the_sum_of_what_was_sent_tracks_the_true_sum(fmt):
    rng = np.random.default_rng(1)
    # The same small gradient batch after batch: plain quantisation repeats the same error.
    grad = (rng.standard_normal((8, 4, 3)) * 0.01 + 0.003).astype(np.float32)
    grad[0, 0, 0] = 1.0  # a large value makes the scale coarse for the small ones
    feedback = ErrorFeedback(fmt)
    steps = 50
    with_feedback = sum(
        feedback.quantize(grad).dequantize().astype(np.float64) for _ in range(steps)
    )
    plain = steps * quantize(grad, fmt).dequantize().astype(np.float64)
    truth = steps * grad.astype(np.float64)
    step = float(quantize(grad, fmt).scale.max())
    # With feedback the accumulated error stays within one step; without, it grows with steps.
    assert np.abs(with_feedback - truth).max() <= step
    assert np.abs(plain - truth).max() > 5 * step


def test_a_batch_of_another_shape_starts_afresh():
    feedback = ErrorFeedback("int8")
    feedback.quantize(np.full((4, 2, 3), 0.3, dtype=np.float32))
    last = np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 2, 3)  # the round's short batch
    sent = feedback.quantize(last)
    np.testing.assert_array_equal(sent.codes(), quantize(last, "int8").codes())
    assert feedback.residual is not None
    assert feedback.residual.shape == last.shape

import math

import pytest
import torch

from detforge.losses import centerness_targets, compute_centerness


def test_scalar_formula():
    assert compute_centerness(2, 3, 6, 1) == pytest.approx(math.sqrt(2 / 6 * 1 / 3))
    assert compute_centerness(5.0, 5.0, 5.0, 5.0) == 1.0
    assert isinstance(compute_centerness(1, 2, 3, 4), float)


def test_edges_and_outside_give_zero():
    assert compute_centerness(0, 3, 6, 1) == 0.0  # on the left edge
    assert compute_centerness(-1, 3, 6, 1) == 0.0  # outside the box
    assert compute_centerness(0, 0, 0, 0) == 0.0  # zero-size box, no division by zero


def test_tensor_matches_scalar_loop():
    ltrb = torch.rand(50, 4) * 20 - 2
    got = centerness_targets(ltrb)
    want = torch.tensor([compute_centerness(*row.tolist()) for row in ltrb])
    assert got.shape == (50,)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(compute_centerness(*ltrb.unbind(1)), want, atol=1e-6)
    assert ((got >= 0) & (got <= 1)).all()


def test_tensor_broadcasts_and_handles_empty():
    got = compute_centerness(torch.tensor([1.0, 2.0]), 1.0, torch.tensor([1.0, 8.0]), 1.0)
    assert torch.allclose(got, torch.tensor([1.0, 0.5]))
    assert centerness_targets(torch.zeros(0, 4)).shape == (0,)
    assert centerness_targets(torch.zeros(2, 3, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="4 distances"):
        centerness_targets(torch.zeros(3, 2))

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import FeaturePyramidNetwork

from detforge.models.necks import FPN, SimplePyramid


def test_output_strides_shapes_and_extra_levels():
    fpn = FPN([16, 24, 40], [8, 16, 32], out_channels=32, extra_levels=2)
    assert fpn.strides == (8, 16, 32, 64, 128)
    feats = [torch.rand(2, 16, 13, 17), torch.rand(2, 24, 7, 9), torch.rand(2, 40, 4, 5)]
    out = fpn(feats)
    assert [tuple(o.shape) for o in out] == [
        (2, 32, 13, 17),
        (2, 32, 7, 9),
        (2, 32, 4, 5),
        (2, 32, 2, 3),
        (2, 32, 1, 2),
    ]


def test_without_extra_levels_equals_torchvision_fpn():
    fpn = FPN([8, 16], [4, 8], out_channels=16, extra_levels=0)
    reference = FeaturePyramidNetwork([8, 16], 16)
    reference.load_state_dict(fpn.fpn.state_dict())
    feats = [torch.rand(1, 8, 8, 8), torch.rand(1, 16, 4, 4)]
    for ours, theirs in zip(fpn(feats), reference({"0": feats[0], "1": feats[1]}).values()):
        torch.testing.assert_close(ours, theirs)


def test_extra_levels_come_from_the_last_output():
    fpn = FPN([8, 16], [8, 16], out_channels=8, extra_levels=2)
    feats = [torch.rand(1, 8, 8, 8), torch.rand(1, 16, 4, 4)]
    p3, p4, p5, p6 = fpn(feats)
    convs = fpn.fpn.extra_blocks.convs
    torch.testing.assert_close(p5, convs[0](p4))
    torch.testing.assert_close(p6, convs[1](torch.relu(p5)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="one stride per input level"):
        FPN([8, 16], [8])
    with pytest.raises(ValueError, match="must increase"):
        FPN([8, 16], [16, 8])
    with pytest.raises(ValueError, match="expects 2 feature maps"):
        FPN([8, 16], [8, 16], out_channels=8)([torch.rand(1, 8, 4, 4)])


def test_simple_pyramid_strides_channels_and_shapes():
    pyramid = SimplePyramid(32, 16)
    assert pyramid.strides == (8, 16, 32)
    assert pyramid.channels == (16, 32, 32)
    x = torch.rand(2, 32, 5, 7)
    up, same, down = pyramid(x)
    assert tuple(up.shape) == (2, 16, 10, 14)
    assert torch.equal(same, x)
    torch.testing.assert_close(down, F.max_pool2d(x, 2))  # odd sizes floor: 5 x 7 -> 2 x 3
    # The 2x level is one 2x2 stride-2 transposed conv: each output pixel sees one input pixel.
    deconv = pyramid.branches[0]
    assert isinstance(deconv, torch.nn.ConvTranspose2d) and deconv.stride == (2, 2)
    torch.testing.assert_close(up[:, :, 2:4, 4:6], deconv(x[:, :, 1:2, 2:3]))


def test_simple_pyramid_four_x_level_and_fpn_on_top():
    pyramid = SimplePyramid(32, 16, scale_factors=(4, 2, 1, 0.5))
    assert pyramid.strides == (4, 8, 16, 32)
    assert pyramid.channels == (8, 16, 32, 32)
    fpn = FPN(pyramid.channels, pyramid.strides, out_channels=8, extra_levels=1)
    assert fpn.strides == (4, 8, 16, 32, 64)
    out = fpn(pyramid(torch.rand(1, 32, 4, 4)))
    assert [tuple(o.shape[-2:]) for o in out] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


def test_simple_pyramid_bad_arguments():
    with pytest.raises(ValueError, match="one of 4, 2, 1, 0.5"):
        SimplePyramid(32, 16, scale_factors=(3, 1))
    with pytest.raises(ValueError, match="must decrease"):
        SimplePyramid(32, 16, scale_factors=(0.5, 1, 2))
    with pytest.raises(ValueError, match="divisible"):
        SimplePyramid(32, 6, scale_factors=(4, 1))
    with pytest.raises(ValueError, match=r"Tensor\[B, 32, H, W\]"):
        SimplePyramid(32, 16)(torch.rand(1, 16, 4, 4))

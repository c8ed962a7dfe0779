import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork

from detforge.models.necks import FPN


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

"""YOLOv3: builds on timm backbones by name (darknet53, cspdarknet53), anchors as a saved buffer, the
``anchors="auto"`` fit before training, and the decoded box convention."""

from types import SimpleNamespace

import pytest
import torch

from detforge.anchors import COCO_ANCHORS
from detforge.models.registry import create_model
from detforge.models.yolov3 import YOLOv3


@pytest.mark.parametrize("name", ["yolov3_darknet53", "yolov3_cspdarknet53"])
def test_darknet_backbones_by_name(name):
    model = create_model(name, num_classes=2, neck_width=64, neck_num_convs=1, input_size=(64, 64)).eval()
    assert model.strides == (8, 16, 32)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert out["feat_sizes"] == [(8, 8), (4, 4), (2, 2)]
    assert out["cls_logits"].shape == (1, (64 + 16 + 4) * 3, 2) and out["boxes"].shape == (1, 252, 4)


def test_default_anchors_are_coco_scaled_to_the_input_and_saved():
    model = create_model("yolov3_n", num_classes=3)
    assert model.default_input_size == (256, 256)
    expected = torch.tensor(COCO_ANCHORS, dtype=torch.float32) * 256 / 416
    assert torch.allclose(model.anchors, expected)
    assert "anchors" in model.state_dict() and not model.needs_data_fit


def test_explicit_anchors_and_bad_anchors():
    anchors = [[4 * i, 3 * i] for i in range(1, 10)]
    model = create_model("yolov3_n", num_classes=3, anchors=anchors)
    assert model.anchors.tolist() == anchors and model.init_args["anchors"] == anchors
    with pytest.raises(ValueError, match="anchors"):
        create_model("yolov3_n", num_classes=3, anchors=[[1, 2]] * 4)
    with pytest.raises(ValueError, match="anchors"):
        create_model("yolov3_n", num_classes=3, anchors="kmeans")


def test_box_decoding_puts_centres_inside_their_cell():
    model = create_model("yolov3_n", num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))
    boxes = out["boxes"][0]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    p = 0  # level 0, cell (0, 0), anchor 0: centre inside [0, 8), size exp(tw) * anchor
    assert (centre[p] >= 0).all() and (centre[p] < 8).all()
    wh = boxes[p, 2:] - boxes[p, :2]
    assert torch.allclose(wh, out["box_t"][0, p, 2:].exp() * model.anchors[0], rtol=1e-5)


def test_auto_anchors_are_fitted_once_before_training_and_kept_in_the_state_dict():
    from detforge.data.datamodule import DetectionDataModule
    from detforge.models.detector import ObjectDetector

    det = ObjectDetector(
        model="yolov3_n", num_classes=5, anchors="auto", compile_model=False, deterministic=False
    )
    assert det.model.needs_data_fit and det.model.init_args["anchors"] == "auto"
    datamodule = DetectionDataModule("synthetic:32", imgsz=64, num_workers=0)
    datamodule.setup("fit")
    copy = ObjectDetector(model="yolov3_n", num_classes=5, compile_model=False, deterministic=False)
    ema_copy = SimpleNamespace(module=copy)
    det._trainer = SimpleNamespace(
        datamodule=datamodule, callbacks=[SimpleNamespace(_average_model=ema_copy)]
    )
    before = det.model.anchors.clone()
    det.on_fit_start()
    fitted = det.model.anchors.clone()
    assert not torch.equal(before, fitted) and not det.model.needs_data_fit
    assert fitted.max() <= 64 and (fitted.prod(1)[1:] >= fitted.prod(1)[:-1]).all()
    assert torch.equal(ema_copy.module.model.anchors, fitted)  # the EMA copy validates with them too
    det.on_fit_start()  # once only
    assert torch.equal(det.model.anchors, fitted)
    reloaded = YOLOv3("mobilenetv3_small_100", 5, anchors="auto", neck_width=128, neck_num_convs=3)
    reloaded.load_state_dict(det.model.state_dict())
    assert torch.equal(reloaded.anchors, fitted) and not reloaded.needs_data_fit


def test_darknet_mse_loss_trains():
    model = create_model("yolov3_n", num_classes=2, reg_loss_fn="mse", multi_anchor_thresh=None)
    targets = [{"boxes": torch.tensor([[10.0, 8.0, 40.0, 50.0]]), "labels": torch.tensor([1])}]
    _, losses = model.forward_loss(torch.rand(1, 3, 64, 96), targets)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and losses["num_pos"] == 1 and losses["reg_loss"] > 0

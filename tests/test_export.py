import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from detforge.export import check_onnx, export_onnx, quantize_int8
from detforge.models.fcos import FCOS
from detforge.models.yolox import YOLOX

SIZE = 64


def op_types(graph) -> set[str]:
    """Op types of an ONNX graph and its subgraphs (NMS sits inside torchvision's If on empty input)."""
    ops = set()
    for node in graph.node:
        ops.add(node.op_type)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                ops |= op_types(attr.g)
    return ops


@pytest.fixture(scope="module")
def fcos():
    torch.manual_seed(0)
    model = FCOS("resnet10t", 3, fpn_channels=32, head_num_convs=1, input_size=(SIZE, SIZE))
    model.score_thresh = 0.01  # random weights score ~0.07: keep real detections in the graph
    return model


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def raw_path(fcos, images, tmp_path_factory):
    return export_onnx(fcos, tmp_path_factory.mktemp("onnx") / "sub" / "raw.onnx", example_input=images)


def test_raw_heads_match_pytorch(fcos, images, raw_path):
    path = raw_path
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path))
    assert [o.name for o in session.get_outputs()] == ["cls_logits", "box_reg", "centerness"]
    assert check_onnx(fcos, path, images) < 1e-4
    assert fcos.training  # the export restores the mode


def test_nms_graph_matches_pytorch_on_real_detections(fcos, images, tmp_path):
    path = export_onnx(fcos, tmp_path / "nms.onnx", example_input=images, with_nms=True)
    assert check_onnx(fcos, path, images) < 1e-4
    assert "NonMaxSuppression" in op_types(onnx.load(str(path)).graph)
    boxes, scores, labels, counts = ort.InferenceSession(str(path)).run(None, {"images": images.numpy()})
    assert boxes.shape == (2, 100, 4) and counts.tolist() == [100, 100]
    # Same detections as the model's own postprocess.
    fcos.eval()
    with torch.no_grad():
        expected = fcos.postprocess(fcos(images), [(SIZE, SIZE)] * 2)
    fcos.train()
    for i, det in enumerate(expected):
        # Same set of (box, label); near-equal scores may come in either order.
        ours = np.concatenate([det["boxes"].numpy(), det["labels"].numpy()[:, None] * 1e3], 1)
        theirs = np.concatenate([boxes[i], labels[i][:, None] * 1e3], 1)
        pair = np.abs(ours[:, None] - theirs[None]).max(-1)
        assert pair.min(0).max() < 1e-4 and pair.min(1).max() < 1e-4
        np.testing.assert_allclose(scores[i], det["scores"].numpy(), atol=1e-5)


def test_yolox_nms_graph_and_default_example(tmp_path):
    torch.manual_seed(0)
    model = YOLOX("resnet10t", 2, fpn_channels=16, head_width=16, head_num_convs=1, input_size=(SIZE, SIZE))
    model.score_thresh = 1e-5  # init scores are ~0.01 * 0.01
    model.max_detections_per_image = 20
    path = export_onnx(model, tmp_path / "yolox.onnx", with_nms=True)  # default example: [1, 3, 64, 64]
    x = torch.rand(1, 3, SIZE, SIZE)
    assert check_onnx(model, path, x) < 1e-4
    counts = ort.InferenceSession(str(path)).run(["num_detections"], {"images": x.numpy()})[0]
    assert counts.tolist() == [20]


def test_dynamic_batch_and_size(fcos, tmp_path):
    x = torch.rand(2, 3, SIZE, SIZE)
    nms = export_onnx(
        fcos, tmp_path / "b.onnx", example_input=x, with_nms=True, dynamic_axes={"images": {0: "b"}}
    )
    assert check_onnx(fcos, nms, torch.rand(3, 3, SIZE, SIZE)) < 1e-4
    axes = {"images": {0: "b", 2: "h", 3: "w"}}
    raw = export_onnx(fcos, tmp_path / "hw.onnx", example_input=x, dynamic_axes=axes)
    assert check_onnx(fcos, raw, torch.rand(1, 3, 96, 128)) < 1e-4
    with pytest.raises(ValueError, match="height and width cannot be dynamic"):
        export_onnx(fcos, tmp_path / "no.onnx", example_input=x, with_nms=True, dynamic_axes=axes)


def test_int8_dynamic_quantisation_runs_close_to_float(images, raw_path, tmp_path):
    path = raw_path
    q = quantize_int8(path, tmp_path / "int8.onnx")
    assert q.stat().st_size < path.stat().st_size
    ref = ort.InferenceSession(str(path)).run(["box_reg"], {"images": images.numpy()})[0]
    got = ort.InferenceSession(str(q)).run(["box_reg"], {"images": images.numpy()})[0]
    assert got.shape == ref.shape
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.9


def test_export_needs_a_detector(tmp_path):
    with pytest.raises(TypeError, match="not a detforge Detector"):
        export_onnx(torch.nn.Conv2d(3, 3, 1), tmp_path / "conv.onnx", example_input=torch.rand(1, 3, 8, 8))

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


@pytest.mark.parametrize("name", ["nexus", "phantom", "nightvision_edge", "nightvision_multi_domain"])
@pytest.mark.parametrize("with_nms", [False, True])
def test_edge_models_through_the_one_exporter_match_pytorch(name, with_nms, tmp_path):
    from detforge.models import create_model

    torch.manual_seed(0)
    model = create_model(name).eval()
    # untrained scores are near-ties: keep every candidate (no top-k or max-detections cut, no suppression)
    # so the detection sets do not depend on how ties are ordered; FCOS's NMS test above suppresses for real
    model.set_postprocess(
        score_thresh=0.0, nms_thresh=1.0, pre_nms_topk=100_000, max_detections_per_image=5000
    )
    x = torch.rand(2, model.in_chans, SIZE, SIZE)
    path = export_onnx(model, tmp_path / f"{name}.onnx", example_input=x, with_nms=with_nms)
    assert check_onnx(model, path, x) < 1e-4
    session = ort.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == list(model.export_inputs(x)) == ["images"]
    outputs = [o.name for o in session.get_outputs()]
    if with_nms:
        assert outputs == ["boxes", "scores", "labels", "num_detections"]
    elif name == "nexus":
        assert outputs[0] == "cls_logits_p3" and len(outputs) == 12


def test_dynamic_auto_follows_the_models_raw_outputs(tmp_path):
    """``dynamic_axes="auto"``: any height and width where the raw outputs hold no grid (Phantom), only the
    batch where they hold decoded boxes (NightVision)."""
    from detforge.models import create_model

    torch.manual_seed(0)
    phantom = create_model("phantom").eval()
    path = export_onnx(phantom, tmp_path / "p.onnx", image_size=(SIZE, SIZE), dynamic_axes="auto")
    assert check_onnx(phantom, path, torch.rand(3, 3, 40, 24)) < 1e-4
    nv = create_model("nightvision_edge").eval()
    path = export_onnx(nv, tmp_path / "nv.onnx", image_size=(SIZE, SIZE), dynamic_axes="auto")
    assert check_onnx(nv, path, torch.rand(3, 1, SIZE, SIZE)) < 1e-4
    with pytest.raises(ValueError, match="cannot be dynamic"):
        export_onnx(nv, tmp_path / "no.onnx", dynamic_axes={"images": {2: "h"}})


def test_fold_batchnorm_folds_conv_bn_pairs_only():
    from timm.layers import BatchNormAct2d

    from detforge.export import fold_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.Conv2d(8, 4, 1), torch.nn.BatchNorm2d(4)),
        torch.nn.Conv2d(4, 4, 1),
        BatchNormAct2d(4),  # has its own activation: not a plain norm to fold
    )
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
    model.train()
    folded = fold_batchnorm(model)
    kinds = [type(m).__name__ for m in folded.modules()]
    assert kinds.count("BatchNorm2d") == 0 and kinds.count("BatchNormAct2d") == 1
    assert isinstance(folded[1], torch.nn.Identity) and isinstance(folded[3][1], torch.nn.Identity)
    assert model.training and isinstance(model[1], torch.nn.BatchNorm2d)  # the original is untouched
    x = torch.rand(2, 3, 16, 16)
    model.eval()
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_compact_names_shrinks_and_keeps_io_names(fcos, images, tmp_path):
    from detforge.export import compact_names

    long = export_onnx(fcos, tmp_path / "long.onnx", example_input=images, with_nms=True, compact=False)
    short = compact_names(long, tmp_path / "short.onnx")
    assert short.stat().st_size < long.stat().st_size
    graph = onnx.load(str(short)).graph
    assert [o.name for o in graph.output] == ["boxes", "scores", "labels", "num_detections"]
    assert all(len(i.name) <= 4 for i in graph.initializer)
    assert check_onnx(fcos, short, images) < 1e-4  # NMS subgraphs renamed consistently


def test_static_int8_with_calibration_is_smaller_than_dynamic(tmp_path):
    from detforge.models import create_model

    torch.manual_seed(0)
    model = create_model("nexus", num_classes=3).eval()
    path = export_onnx(model, tmp_path / "n.onnx", image_size=(SIZE, SIZE))
    frames = [torch.rand(1, 3, SIZE, SIZE) for _ in range(3)]
    static = quantize_int8(path, tmp_path / "s.onnx", [model.export_inputs(f) for f in frames])  # by name
    arrays = quantize_int8(path, tmp_path / "z.onnx", frames)  # one array per item: the first input
    dynamic = quantize_int8(path, tmp_path / "d.onnx")
    assert static.stat().st_size < 0.4 * path.stat().st_size
    assert "QuantizeLinear" in op_types(onnx.load(str(static)).graph)  # QDQ: activations quantised too
    assert "DynamicQuantizeLinear" in op_types(onnx.load(str(dynamic)).graph)
    assert abs(arrays.stat().st_size - static.stat().st_size) < 1024
    with pytest.raises(ValueError, match="lacks the graph inputs"):
        quantize_int8(path, tmp_path / "x.onnx", [{"image": frames[0]}])


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_model_refuses_an_nms_graph_naming_the_option(method, tmp_path):
    model = FCOS("resnet10t", 3, fpn_channels=16, head_num_convs=1, input_size=(SIZE, SIZE), nms_method=method)
    with pytest.raises(ValueError, match=rf"nms_method is '{method}' \(soft-NMS\).*nms_method='hard'"):
        export_onnx(model, tmp_path / "soft.onnx", with_nms=True)
    assert not (tmp_path / "soft.onnx").exists()


def test_a_model_with_frozen_batchnorm_exports(images, tmp_path):
    """The fine-tuning recipe's frozen stages and BatchNorm (the fused frozen layers) export and match."""
    from detforge.models.backbone import freeze_stages
    from detforge.models.frozen_norm import FusedFrozenBatchNorm2d

    torch.manual_seed(0)
    model = FCOS("resnet10t", 3, fpn_channels=16, head_num_convs=1, input_size=(SIZE, SIZE))
    freeze_stages(getattr(model.backbone, "body", model.backbone), 4)
    assert any(isinstance(m, FusedFrozenBatchNorm2d) for m in model.modules())
    path = export_onnx(model, tmp_path / "frozen.onnx", example_input=images)
    assert check_onnx(model, path, images) < 1e-4

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from detforge.boxes import scale_boxes
from detforge.data.datamodule import detection_collate
from detforge.data.synthetic import SyntheticShapes
from detforge.engine.config import LoggingConfig, MetricConfig, TransformConfig
from detforge.models.backbone import FeatureBackboneConfig
from detforge.models.detector import ObjectDetector, metric_targets, to_original_size

TINY = dict(
    backbone="test_resnet",
    num_classes=3,
    fpn_channels=16,
    head_num_convs=1,
    strides=(8, 16, 32),
    compile_model=False,
    deterministic=False,
)


def tiny(**kwargs) -> ObjectDetector:
    return ObjectDetector(**{**TINY, **kwargs})


def loader(n=8, size=64, batch=4) -> DataLoader:
    data = SyntheticShapes(num_images=n, image_size=size, num_classes=3, seed=0)
    return DataLoader(data, batch_size=batch, collate_fn=detection_collate)


def trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**defaults, **kwargs})


def target(boxes, labels, size=(64, 64), orig=(64, 64)):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "size": torch.tensor(size),
        "orig_size": torch.tensor(orig),
        "image_id": 0,
    }


@pytest.mark.parametrize(
    "kwargs, allowed",
    [
        (dict(detection_arch="retina"), "fcos"),
        (dict(optimizer="adagrad"), "lamb"),
        (dict(scheduler="poly"), "onecycle"),
        (dict(optimizer={"params": {}}), "class"),
    ],
)
def test_unknown_options_raise_listing_allowed(kwargs, allowed):
    with pytest.raises(ValueError, match=allowed):
        tiny(**kwargs)


def test_needs_backbone_or_model():
    with pytest.raises(ValueError, match="backbone"):
        ObjectDetector(num_classes=3, compile_model=False, deterministic=False)


def test_strides_must_match_backbone():
    with pytest.raises(ValueError, match="strides"):
        tiny(strides=(4, 8, 16))


def test_forward_loss_postprocess_zero_one_border_and_mixed_box_counts():
    model = tiny()
    images = torch.rand(4, 3, 64, 64)
    targets = [
        target([], []),
        target([[10, 12, 30, 40]], [1]),
        target([[0, 0, 20, 64], [40, 50, 64, 64]], [0, 2]),  # touching the border
        target([[5, 5, 20, 20], [30, 30, 60, 50], [1, 40, 25, 63]], [2, 1, 0]),
    ]
    outputs = model(images)
    losses = model.model.loss(outputs, targets)
    for key in ("loss", "cls_loss", "reg_loss", "centerness_loss", "num_pos"):
        assert torch.isfinite(losses[key]), key
    losses["loss"].backward()
    assert losses["num_pos"] > 0
    preds = model.predict(images)
    assert len(preds) == 4
    for p in preds:
        assert p["boxes"].shape[1] == 4 and p["labels"].dtype == torch.int64
        assert (p["boxes"] >= 0).all() and (p["boxes"] <= 64).all()

    # validation step: the same forward gives loss and detections; the metric sees every image
    model.val_metrics["map"].reset()
    model.log = lambda *a, **k: None
    model.validation_step((images, targets), 0)
    assert len(model.val_metrics["map"].gt_counts) >= 1


def test_to_original_size_matches_scale_boxes():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 64.0, 48.0]])
    t = target(boxes.tolist(), [0, 1], size=(48, 64), orig=(300, 400))
    out = to_original_size([{"boxes": boxes, "scores": torch.ones(2)}], [t])[0]
    torch.testing.assert_close(out["boxes"], scale_boxes(boxes, (48, 64), (300, 400)))
    assert torch.equal(out["scores"], torch.ones(2))
    t["area"] = torch.tensor([1600.0, 3072.0])
    gt = metric_targets([t])[0]
    torch.testing.assert_close(gt["boxes"], scale_boxes(boxes, (48, 64), (300, 400)))
    torch.testing.assert_close(gt["area"], t["area"] * (300 / 48) * (400 / 64))


def test_hyperparameters_are_plain_and_checkpoint_loads_weights_only(tmp_path):
    model = tiny(
        backbone=FeatureBackboneConfig("test_resnet"),
        metrics=[MetricConfig(name="map", backend="torchmetrics", metric_class="DetectionMAP")],
        logging_config=LoggingConfig(log_learning_rate=True),
        transform_config=TransformConfig(image_size=64),
        ema_decay=0.9,
        ema_warmup_steps=0,
        class_names=["a", "b", "c"],
    )
    t = trainer(tmp_path, max_steps=2, limit_val_batches=1)
    t.fit(model, loader(), loader(4))
    path = tmp_path / "m.ckpt"
    t.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["backbone"]["model_name"] == "test_resnet"
    assert "current_model_state" in ckpt  # EMA: raw weights kept beside the averaged ones
    loaded = ObjectDetector.load_from_checkpoint(path, weights_only=True)
    assert loaded.class_names == ["a", "b", "c"]
    for key, value in ckpt["state_dict"].items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_logged_names(tmp_path):
    model = tiny(
        logging_config=LoggingConfig(log_learning_rate=True, log_gradient_norm=True, log_weight_norm=True)
    )
    t = trainer(tmp_path, max_steps=2, log_every_n_steps=1, limit_val_batches=1, val_check_interval=2)
    t.fit(model, loader(), loader(4))
    names = set(t.callback_metrics)
    expected = {
        "train/loss",
        "train/cls_loss",
        "train/reg_loss",
        "train/centerness_loss",
        "train/num_pos",
        "train/lr",
        "train/grad_norm",
        "train/weight_norm",
        "val/loss",
        "val/cls_loss",
        "val/map",
        "val/map_50",
        "val/map_75",
    }
    assert expected <= names, expected - names
    assert model.last_val_stats is not None and "map_per_class" in model.last_val_stats


@pytest.mark.parametrize(
    "name, cls",
    [
        ("adamw", torch.optim.AdamW),
        ("adam", torch.optim.Adam),
        ("sgd", torch.optim.SGD),
        ("rmsprop", torch.optim.RMSprop),
        ("lamb", None),
        ({"class": "torch.optim.SGD", "params": {"momentum": 0.9}}, torch.optim.SGD),
    ],
)
def test_optimizers(name, cls):
    model = tiny(optimizer=name, scheduler=None, weight_decay=0.01)
    opt = model.configure_optimizers()["optimizer"]
    if cls is None:
        import timm.optim

        cls = timm.optim.Lamb
    assert isinstance(opt, cls)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    if isinstance(name, dict):
        assert opt.param_groups[0]["momentum"] == 0.9
    # torch's fused kernels for AdamW / Adam / SGD, by name or by class
    assert bool(opt.defaults.get("fused")) == (cls in (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD))


def test_optimizer_kwargs_choose_foreach_over_fused():
    model = tiny(optimizer="adamw", scheduler=None, optimizer_kwargs={"foreach": True})
    opt = model.configure_optimizers()["optimizer"]
    assert opt.defaults["foreach"] is True and not opt.defaults.get("fused")


def test_warmup_then_cosine_schedule(tmp_path):
    model = tiny(lr=0.1, warmup_steps=4, warmup_ratio=0.1, scheduler="cosine")
    lrs = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    t = trainer(tmp_path, max_steps=10, limit_val_batches=0, callbacks=[Record()])
    t.fit(model, loader(n=40, size=32, batch=4))
    assert len(lrs) == 10
    for step in range(4):  # linear warmup from 0.1 * lr
        assert lrs[step] == pytest.approx(0.1 * (0.1 + 0.9 * step / 4))
    for step in range(4, 10):  # cosine over the remaining 6 steps
        assert lrs[step] == pytest.approx(0.05 * (1 + math.cos(math.pi * (step - 4) / 6)))


def test_cosine_per_epoch_spans_the_epochs(tmp_path):
    model = tiny(lr=0.1, scheduler="cosine", scheduler_kwargs={"interval": "epoch"})
    lrs = []

    class Record(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    t = trainer(tmp_path, max_steps=-1, max_epochs=4, limit_val_batches=0, callbacks=[Record()])
    t.fit(model, loader(n=8, size=32, batch=4))
    assert t.lr_scheduler_configs[0].scheduler.lr_lambdas[0].total_steps == 4
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])


@pytest.mark.parametrize("scheduler", ["step", "multistep", "onecycle", None])
def test_other_schedulers_build(tmp_path, scheduler):
    model = tiny(scheduler=scheduler)
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    t.fit(model, loader(n=4, size=32))
    assert t.global_step == 1


def test_freeze_backbone():
    model = tiny(freeze_backbone=True)
    body = [p.requires_grad for n, p in model.model.named_parameters() if n.startswith("features.body.")]
    rest = [p.requires_grad for n, p in model.model.named_parameters() if not n.startswith("features.body.")]
    assert body and not any(body)
    assert rest and all(rest)


def test_preprocess_and_data_config():
    model = tiny(transform_config=TransformConfig(image_size=64))
    cfg = model.get_data_config()
    assert cfg["input_size"] == (3, 64, 64) and len(cfg["mean"]) == 3
    image = torch.randint(0, 255, (3, 40, 80), dtype=torch.uint8)
    batch = model.preprocess(image)
    assert batch.shape == (1, 3, 64, 64)
    assert batch[0, :, 32:, :].abs().sum() == 0  # letterbox padding at the bottom
    with pytest.raises(RuntimeError, match="transform_config"):
        tiny().get_data_config()


def test_wraps_registered_models():
    model = ObjectDetector(model="nexus", num_classes=3, compile_model=False, deterministic=False)
    images = torch.rand(2, 3, 64, 64)
    targets = [target([[10, 12, 40, 50]], [1]), target([], [])]
    losses = model.model.loss(model(images), targets)
    assert torch.isfinite(losses["loss"])
    assert len(model.predict(images)) == 2
    # Registered models are built for the data's channels: 3-channel data gives a 3-channel NightVision,
    # 1-channel (thermal) data a 1-channel Nexus.
    rgb = ObjectDetector(model="nightvision_edge", num_classes=3, compile_model=False, deterministic=False)
    assert rgb.model.in_chans == 3 and len(rgb.predict(images)) == 2
    thermal = ObjectDetector(
        model="nexus", num_classes=3, in_chans=1, compile_model=False, deterministic=False
    )
    assert thermal.model.in_chans == 1 and len(thermal.predict(torch.rand(1, 1, 64, 64))) == 1


def test_registered_model_gets_the_arguments_changed_from_their_defaults():
    assert ObjectDetector(model="detforge_n", num_classes=3).model.cls_quality  # its own default loss
    model = ObjectDetector(model="detforge_n", num_classes=3, focal_gamma=1.5, score_thresh=0.3, cls_loss_fn="focal")
    assert model.model.score_thresh == 0.3
    assert not model.model.cls_quality and model.model.cls_loss_fn.gamma == 1.5
    assert model.model.head.cls_logits.in_channels == 64  # detforge_n's own FPN width stays
    wins = ObjectDetector(model="detforge_n", num_classes=3, score_thresh=0.3, model_kwargs={"score_thresh": 0.2})
    assert wins.model.score_thresh == 0.2  # model_kwargs wins


def test_registered_model_that_does_not_take_an_argument_raises():
    with pytest.raises(ValueError, match="'nexus' does not take .*fpn_channels"):
        ObjectDetector(model="nexus", num_classes=3, fpn_channels=32)

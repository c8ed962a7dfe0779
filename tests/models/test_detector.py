import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from detforge.data.datamodule import detection_collate
from detforge.data.synthetic import SyntheticShapes
from detforge.engine.config import LoggingConfig, MetricConfig, TransformConfig
from detforge.models.backbone import FeatureBackboneConfig
from detforge.models.detector import ObjectDetector

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


def test_bf16_mixed_precision_trains_with_gradient_clipping(tmp_path):
    """``--trainer.precision bf16-mixed`` with the default recipe's gradient clipping: Lightning's mixed-precision
    plugin refuses to clip a fused optimizer's gradients ("does not allow for gradient clipping"), so the
    optimizer is not fused there; in full precision it is."""
    model = tiny(optimizer="adamw")
    t = trainer(tmp_path, max_steps=2, limit_val_batches=0, precision="bf16-mixed", gradient_clip_val=10.0)
    t.fit(model, loader(n=8, size=32, batch=4))
    assert t.global_step == 2 and not t.optimizers[0].defaults.get("fused")
    model = tiny(optimizer="adamw")
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0, gradient_clip_val=10.0)
    t.fit(model, loader(n=4, size=32))
    assert t.optimizers[0].defaults.get("fused")


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
    # letterbox padding at the bottom, grey 114 as the validation transforms pad
    torch.testing.assert_close(batch[0, :, 32:, :], torch.full((3, 32, 64), 114 / 255))
    # the same tensor the validation transforms give (what `detforge val` / `detforge predict` feed)
    from detforge.data.transforms import build_val_transforms

    val_image, _ = build_val_transforms(64)(image, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)})
    torch.testing.assert_close(batch[0], val_image)
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


def test_registered_model_gets_every_option_set():
    assert ObjectDetector(model="detforge_n", num_classes=3).model.cls_quality  # its own default loss
    model = ObjectDetector(
        model="detforge_n", num_classes=3, focal_gamma=1.5, score_thresh=0.3, cls_loss_fn="focal"
    )
    assert model.model.score_thresh == 0.3
    assert not model.model.cls_quality and model.model.cls_loss_fn.gamma == 1.5
    assert model.model.head.cls_logits.in_channels == 64  # detforge_n's own FPN width stays
    wins = ObjectDetector(
        model="detforge_n", num_classes=3, score_thresh=0.3, model_kwargs={"score_thresh": 0.2}
    )
    assert wins.model.score_thresh == 0.2  # model_kwargs wins
    # 0.5 was ObjectDetector's own default, so it used to be dropped and FCOS kept 0.6
    assert ObjectDetector(model="detforge_n", num_classes=3).model.nms_thresh == 0.6
    assert ObjectDetector(model="detforge_n", num_classes=3, nms_thresh=0.5).model.nms_thresh == 0.5


def test_cli_nms_thresh_reaches_the_default_model():
    """`detforge train --model.nms_thresh 0.5` on the default detforge_n: 0.5 arrives (it kept 0.6)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ObjectDetector, "model", fail_untyped=False)
    cfg = parser.parse_args(
        [
            "--model.model=detforge_n",
            "--model.num_classes=3",
            "--model.compile_model=false",
            "--model.nms_thresh=0.5",
        ]
    )
    assert parser.instantiate_classes(cfg).model.model.nms_thresh == 0.5


def test_autotimm_form_builds_the_registered_model():
    from detforge.models.registry import create_model

    model = tiny(detection_arch="yolox", imgsz=64)
    reference = create_model(
        "yolox_test_resnet", num_classes=3, fpn_channels=16, head_num_convs=1, input_size=(64, 64)
    )
    assert type(model.model) is type(reference)
    assert model.model.init_args == {**reference.init_args, "extra_levels": 0}
    assert model.model.strides == (8, 16, 32)
    five = tiny(strides=(8, 16, 32, 64, 128))  # FCOS P3-P7: extra levels from the built pyramid
    assert five.model.strides == (8, 16, 32, 64, 128) and five.model.init_args["extra_levels"] == 2
    assert tiny(backbone={"model_name": "test_resnet", "out_indices": [2, 3, 4]}).model.strides == (8, 16, 32)
    dropped = tiny(backbone=FeatureBackboneConfig("test_resnet", drop_path_rate=0.1, drop_rate=0.2)).model
    assert dropped.init_args["backbone"] == FeatureBackboneConfig(
        "test_resnet", drop_path_rate=0.1, drop_rate=0.2
    )
    assert any(getattr(m, "drop_prob", 0.0) > 0 for m in dropped.backbone.modules())  # reached timm
    with pytest.raises(ValueError, match="autotimm"):
        ObjectDetector(model="detforge_n", backbone="resnet18", compile_model=False, deterministic=False)


def test_built_detector_and_its_checkpoint(tmp_path):
    from detforge.models.registry import create_model

    built = create_model("fcos_test_resnet", num_classes=3, fpn_channels=16, head_num_convs=1, extra_levels=0)
    model = ObjectDetector(model=built, compile_model=False, deterministic=False)
    assert model.model is built and model.num_classes == 3
    assert model.hparams.model["class_path"] == "detforge.models.fcos.FCOS"
    with pytest.raises(ValueError, match="fpn_channels"):
        ObjectDetector(model=built, fpn_channels=8, compile_model=False, deterministic=False)
    with pytest.raises(ValueError, match="classes"):
        ObjectDetector(model=built, num_classes=5, compile_model=False, deterministic=False)
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    t.fit(model, loader(n=4, size=32))
    t.save_checkpoint(tmp_path / "built.ckpt")
    loaded = ObjectDetector.load_from_checkpoint(tmp_path / "built.ckpt", weights_only=True)
    assert type(loaded.model) is type(built) and loaded.model.init_args == built.init_args
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_cli_takes_a_built_detector_as_class_path():
    """``--model.model.class_path`` / ``--model.model.init_args.*`` (YAML: ``model: {class_path, init_args}``)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ObjectDetector, "model", fail_untyped=False)
    cfg = parser.parse_args(
        [
            "--model.model.class_path=detforge.models.fcos.FCOS",
            "--model.model.init_args.backbone=test_resnet",
            "--model.model.init_args.num_classes=3",
            "--model.model.init_args.fpn_channels=16",
            "--model.model.init_args.nms_thresh=0.4",
            "--model.compile_model=false",
        ]
    )
    model = parser.instantiate_classes(cfg).model
    assert type(model.model).__name__ == "FCOS" and model.model.nms_thresh == 0.4 and model.num_classes == 3


def test_registered_model_that_does_not_take_an_argument_raises():
    with pytest.raises(ValueError, match="'nexus' does not take .*fpn_channels"):
        ObjectDetector(model="nexus", num_classes=3, fpn_channels=32)


# Hyper-parameters as `detforge train` saved them before checkpoint format 2 (no format_version; LightningCLI's
# instantiator; ObjectDetector's own defaults for the model options, which a registered model never got).
V1_DEFAULT_RUN = {
    "backbone": None,
    "detection_arch": "fcos",
    "metrics": None,
    "logging_config": None,
    "transform_config": None,
    "lr": 0.01,
    "weight_decay": 0.0005,
    "optimizer": "adamw",
    "optimizer_kwargs": None,
    "scheduler": "cosine",
    "scheduler_kwargs": None,
    "fpn_channels": 256,
    "head_num_convs": 4,
    "focal_alpha": 0.25,
    "focal_gamma": 2.0,
    "cls_loss_weight": 1.0,
    "reg_loss_weight": 1.0,
    "centerness_loss_weight": 1.0,
    "score_thresh": 0.05,
    "nms_thresh": 0.5,
    "max_detections_per_image": 100,
    "freeze_backbone": False,
    "strides": [8, 16, 32, 64, 128],
    "regress_ranges": None,
    "compile_model": False,
    "compile_kwargs": None,
    "seed": None,
    "deterministic": False,
    "model": "detforge_n",
    "model_kwargs": None,
    "warmup_steps": 100,
    "warmup_ratio": 0.001,
    "ema_decay": 0.99,
    "ema_warmup_steps": 50.0,
    "imgsz": 128,
    "in_chans": 3,
    "num_classes": 5,
    "class_names": ["circle", "rectangle", "triangle", "ellipse", "star"],
    "_instantiator": "lightning.pytorch.cli.instantiate_module",
    "cls_loss_fn": None,
    "reg_loss_fn": None,
}


def _v1_checkpoint(path, hparams, state_dict):
    import lightning

    torch.save(
        {
            "state_dict": state_dict,
            "hyper_parameters": hparams,
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    return path


def test_checkpoint_written_before_format_2_keeps_its_settings(tmp_path):
    current = ObjectDetector(model="detforge_n", num_classes=5, compile_model=False, deterministic=False)
    assert current.hparams.format_version == 2
    path = _v1_checkpoint(tmp_path / "v1.ckpt", V1_DEFAULT_RUN, current.state_dict())
    loaded = ObjectDetector.load_from_checkpoint(path, weights_only=True)
    # as before: detforge_n's own settings (FCOS NMS 0.6, 64-channel FPN, strides 8-64), not the old defaults
    assert loaded.model.nms_thresh == 0.6 and loaded.model.strides == (8, 16, 32, 64)
    assert loaded.model.head.cls_logits.in_channels == 64 and loaded.model.cls_quality
    assert loaded.class_names[0] == "circle" and loaded.hparams.imgsz == 128
    for key, value in current.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)

    # the autotimm form got every option, ObjectDetector's 0.5 NMS included: it keeps them
    autotimm = dict(V1_DEFAULT_RUN, model=None, backbone="test_resnet", fpn_channels=16, head_num_convs=1)
    autotimm.update(strides=[8, 16, 32], num_classes=3, class_names=None, imgsz=64)
    del autotimm["_instantiator"]
    built = tiny(nms_thresh=0.5, imgsz=64)
    loaded = ObjectDetector.load_from_checkpoint(
        _v1_checkpoint(tmp_path / "v1_timm.ckpt", autotimm, built.state_dict()), weights_only=True
    )
    assert loaded.model.nms_thresh == 0.5 and loaded.model.strides == (8, 16, 32)
    assert loaded.model.init_args == built.model.init_args


def test_checkpoint_that_cannot_load_says_which_version_wrote_it(tmp_path):
    broken = dict(V1_DEFAULT_RUN, model="no_such_model")
    path = _v1_checkpoint(tmp_path / "broken.ckpt", broken, {})
    with pytest.raises(ValueError, match="before checkpoint format 2.*retrain") as info:
        ObjectDetector.load_from_checkpoint(path, weights_only=True)
    assert "\n" not in str(info.value)  # one line
    newer = _v1_checkpoint(tmp_path / "newer.ckpt", dict(V1_DEFAULT_RUN, format_version=99), {})
    with pytest.raises(ValueError, match="newer detforge.*upgrade"):
        ObjectDetector.load_from_checkpoint(newer, weights_only=True)


def test_two_phase_fine_tune_freeze_fit_unfreeze_new_lr_fit(tmp_path):
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = tiny(lr=0.1, scheduler=None)
    assert model.backbone is model.model.features.body  # PyramidDetector.backbone: the timm body
    first_lrs = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            first_lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    model.freeze_backbone()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    t = trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[Record()])
    t.fit(model, loader(n=8, size=32))
    assert first_lrs == [0.1, 0.1]
    for key, value in model.backbone.state_dict().items():  # weights and BatchNorm statistics untouched
        torch.testing.assert_close(value, frozen[key])

    model.unfreeze_backbone()
    assert all(p.requires_grad for p in model.backbone.parameters())
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())
    model.set_lr(1e-3)
    first_lrs.clear()
    t = trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[Record()])
    t.fit(model, loader(n=8, size=32))
    assert first_lrs == [1e-3, 1e-3]
    assert bns[0].training and int(bns[0].num_batches_tracked) == 2  # BatchNorm trains again
    optimized = {id(p) for group in t.optimizers[0].param_groups for p in group["params"]}
    assert all(id(p) in optimized for p in model.backbone.parameters())
    with pytest.raises(ValueError, match="lr"):
        model.set_lr(0.0)
    model.hparams.lr = 5e-4  # the hparams form works the same
    first_lrs.clear()
    trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[Record()]).fit(model, loader(n=4, size=32))
    assert first_lrs == [5e-4]


def test_non_finite_loss_stops_training_naming_the_image_ids(tmp_path):
    model = tiny()
    model.model.loss = lambda outputs, targets: {"loss": torch.tensor(float("nan"), requires_grad=True)}
    with pytest.raises(FloatingPointError, match=r"nan.*image ids \[0, 1\]"):
        trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, loader(n=4, size=32, batch=2))


def test_to_onnx_without_a_path_writes_a_temporary_file(tmp_path):
    from pathlib import Path

    pytest.importorskip("onnx")
    model = tiny()
    path = Path(model.to_onnx(example_input=torch.rand(1, 3, 64, 64)))
    try:
        assert path.suffix == ".onnx" and path.stat().st_size > 0
    finally:
        path.unlink()
    assert model.to_onnx(tmp_path / "m.onnx", example_input=torch.rand(1, 3, 64, 64)) == str(
        tmp_path / "m.onnx"
    )


def test_top_level_names_load_lazily():
    import subprocess
    import sys

    code = (
        "import sys, detforge; assert 'torch' not in sys.modules and 'lightning' not in sys.modules; "
        "from detforge import ObjectDetector, DetectionDataModule, create_model, list_models; "
        "assert ObjectDetector.__name__ == 'ObjectDetector' and 'detforge_n' in list_models()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_trainer_test_with_a_test_split(tmp_path):
    from detforge.data.datamodule import DetectionDataModule

    dm = DetectionDataModule(
        data="synthetic:8",
        test_data="synthetic:4",
        imgsz=64,
        batch_size=4,
        num_workers=0,
        dataset_kwargs={"num_classes": 3},
    )
    model = tiny(imgsz=64)
    (results,) = trainer(tmp_path).test(model, datamodule=dm, verbose=False)
    assert {"test/loss", "test/map", "test/map_50"} <= set(results)
    assert math.isfinite(results["test/loss"]) and 0.0 <= results["test/map"] <= 1.0


def test_torchvision_tutorial_batch_is_a_clear_type_error():
    """``tuple(zip(*batch))``: a tuple of image tensors and a tuple of dicts, as torchvision's tutorial collates."""
    model = tiny()
    batch = [SyntheticShapes(num_images=2, image_size=64, num_classes=3, seed=0)[i] for i in range(2)]
    tutorial = tuple(zip(*batch))
    with pytest.raises(TypeError, match=r"Tensor\[B, C, H, W\].*got a tuple of 2 Tensor.*detection_collate"):
        model.training_step(tutorial, 0)
    with pytest.raises(TypeError, match="detection_collate"):
        model.validation_step(tutorial, 0)


def test_backbone_lr_mult_overrides_the_models_own_multiplier(monkeypatch):
    """DETR asks for its backbone at 0.1x (``lr_multipliers``); an explicit ``backbone_lr_mult`` wins, and None
    keeps the model's own."""

    def lrs(**kwargs):
        module = ObjectDetector(model="detr_n", num_classes=3, lr=1e-3, seed=0, **kwargs)
        monkeypatch.setattr(module, "_total_steps", lambda interval="step": 100)  # no trainer attached
        optimizer = module.configure_optimizers()["optimizer"]
        body = {id(p) for p in module.backbone_body.parameters()}
        return sorted(
            {
                round(g["initial_lr"], 12)
                for g in optimizer.param_groups
                if body & {id(p) for p in g["params"]}
            }
        )

    assert lrs() == [pytest.approx(1e-4)]
    assert lrs(backbone_lr_mult=1.0) == [pytest.approx(1e-3)]
    assert lrs(backbone_lr_mult=0.25) == [pytest.approx(2.5e-4)]


def test_freeze_backbone_stride_freezes_the_stem_and_first_stages_out_of_the_optimizer(monkeypatch):
    """``freeze_backbone_stride=4`` freezes resnet18's stem and layer1 (detectron2's FREEZE_AT=2): the optimizer
    gets none of their weights, layer2 on trains; a value below the first stage's stride names the option."""
    module = ObjectDetector(model="fcos_resnet18", num_classes=3, seed=0, freeze_backbone_stride=4)
    monkeypatch.setattr(module, "_total_steps", lambda interval="step": 100)  # no trainer attached
    optimized = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    body = module.backbone_body
    for name, p in body.named_parameters():
        frozen = name.split(".")[0] in ("conv1", "bn1", "layer1")
        assert p.requires_grad != frozen and (id(p) in optimized) != frozen, name
    with pytest.raises(ValueError, match="freeze_backbone_stride=1"):
        ObjectDetector(model="fcos_resnet18", num_classes=3, freeze_backbone_stride=1, deterministic=False)


def test_training_step_asks_for_the_losses_only(monkeypatch):
    """The training step passes ``detections=False`` (Faster R-CNN then skips its inference-path RoI head);
    a forward_loss override without the keyword still trains."""
    from detforge.models.registry import create_model

    built = create_model("fcos_test_resnet", num_classes=3, fpn_channels=16, head_num_convs=1, extra_levels=0)
    model = ObjectDetector(model=built, compile_model=False, deterministic=False)
    calls = []
    original = type(built).forward_loss

    def recording(self, images, targets, *, detections=True):
        calls.append(detections)
        return original(self, images, targets, detections=detections)

    monkeypatch.setattr(type(built), "forward_loss", recording)
    monkeypatch.setattr(model, "log", lambda *args, **kwargs: None)  # no trainer attached
    batch = (torch.rand(2, 3, 64, 64), [target([[10, 12, 40, 50]], [1]), target([], [])])
    model.training_step(batch, 0)
    assert calls == [False]

    def old_style(self, images, targets):  # written before the keyword existed
        calls.append("old")
        return original(self, images, targets)

    monkeypatch.setattr(type(built), "forward_loss", old_style)
    assert torch.isfinite(model.training_step(batch, 0))
    assert calls == [False, "old"]

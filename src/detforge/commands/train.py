"""``detforge train``: train a detector with Lightning, configured through LightningCLI / jsonargparse.

With no arguments it trains the small default model on the built-in ``synthetic`` data, on the CPU when
that is all there is, and ends with the COCO table. Every ``ObjectDetector``, ``DetectionDataModule`` and
``Trainer`` argument is an option (``--model.focal_gamma 1.5``, ``--data.num_workers 4``,
``--trainer.gradient_clip_val 10``), ``--config run.yaml`` reads a YAML file (the run folder's
``config.yaml`` is one), and these short forms are aliases:

    --model NAME     --model.model           --epochs N       --trainer.max_epochs
    --data SPEC      --data.data             --imgsz N        --data.imgsz
    --batch N        --data.batch_size       --lr X           --model.lr
    --workers N      --data.num_workers      --devices N      --trainer.devices
    --accelerator A  --trainer.accelerator   --strategy S     --trainer.strategy
    --num-nodes N    --trainer.num_nodes     --precision P    --trainer.precision
    --seed N         --seed_everything

``--recipe auto|finetune|none``: ``auto`` (the default) applies the fine-tuning recipe (``FINETUNE_RECIPE``:
learning rates, frozen backbone BatchNorm, short warmup and EMA, photo augmentation, RAM cache) when the
backbone is pretrained and the data is not synthetic, and logs ``recipe: finetune (pretrained backbone, real
data)``; options given on the command line always win.

Plus ``--name`` (run folder ``--project/NAME``, default ``runs/train/exp``, ``exp2``, ...) and
``--resume last|PATH`` (continue a run with its optimizer, scheduler and EMA state).

``--model NAME`` picks a registered model (``detforge models``); its options (``--model.nms_thresh 0.5``,
``--model.fpn_channels 32``) reach its builder when given and keep the model's own defaults otherwise, and
an option the model does not take is an error. A model built from its class instead:
``--model.model.class_path detforge.models.fcos.FCOS --model.model.init_args.backbone resnet18
--model.model.init_args.num_classes 5`` (YAML: ``model: {model: {class_path: ..., init_args: {...}}}``).
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Literal

HELP = "train a detector (default: small model on the built-in synthetic data set)"

ALIASES = {
    "--model": "--model.model",
    "--data": "--data.data",
    "--epochs": "--trainer.max_epochs",
    "--imgsz": "--data.imgsz",
    "--batch": "--data.batch_size",
    "--lr": "--model.lr",
    "--weights": "--model.weights",
    "--workers": "--data.num_workers",
    "--devices": "--trainer.devices",
    "--accelerator": "--trainer.accelerator",
    "--strategy": "--trainer.strategy",
    "--num-nodes": "--trainer.num_nodes",
    "--num_nodes": "--trainer.num_nodes",
    "--precision": "--trainer.precision",
    "--seed": "--seed_everything",
}
FLAG_ALIASES = {"--keep-classes": "--model.keep_classes=true"}
"""Short options that take no value."""
_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")

# The out-of-the-box recipe: small model, synthetic data, under 5 minutes on a 2-core CPU (start-up and the final
# plots included). 1024 training images (val: 256, seed 1) of 5 shape classes, 16 px to 0.75 of the side, cached
# after the first render; flip + mild zoom (colour jitter costs more than the model on a CPU); batch 16 (more
# steps beat bigger batches at a fixed image budget; batch 8 did worse), AdamW (lr in the model's registered recipe), warmup,
# per-step cosine over 30 epochs fitted to the 4:30 budget (FitScheduleToTime) and an EMA short enough for
# ~1600 steps. On a quiet 2-core CPU max_time ends it in epoch ~26 with the learning rate annealed (measured:
# 0.645 mAP, 4:49 wall); validation every 9 epochs and always at the end (ValidateLastEpoch).
DEFAULTS: dict[str, Any] = {
    "model.model": "detforge_n",
    "model.lr": 3e-3,
    "model.weight_decay": 5e-4,
    "model.warmup_steps": 100,
    "model.ema_decay": 0.99,
    "model.ema_warmup_steps": 50.0,
    "model.compile_model": False,
    "model.deterministic": False,
    "data.data": "synthetic:1024",
    "data.imgsz": 128,
    "data.batch_size": 16,
    "data.num_workers": 0,  # rendering from the cache is cheap; worker processes only compete for 2 cores
    "data.photometric": False,
    "data.scale_jitter": (0.75, 1.25),
    "data.dataset_kwargs": {"cache": True, "min_size": 16, "max_size": 0.75},
    "trainer.max_epochs": 30,
    "trainer.check_val_every_n_epoch": 9,
    "trainer.max_time": "00:00:04:30",  # with start-up and the final plots, under 5 minutes
    "trainer.gradient_clip_val": 10.0,
    "trainer.num_sanity_val_steps": 0,
    "trainer.log_every_n_steps": 10,
}

# The part of the recipe tuned to the built-in synthetic shapes. With any other data these fall back to
# DetectionDataModule's own defaults (256 px, colour jitter on, zoom 0.5-1.5, no data set options) unless
# the command line or a config file sets them.
SYNTHETIC_ONLY = (
    "data.imgsz",
    "data.photometric",
    "data.scale_jitter",
    "data.dataset_kwargs",
    "data.num_workers",
)

# Per-model parts of the recipe, applied unless the command line or a config file sets them. detforge_n
# (BatchNorm backbone, GroupNorm head, trained from scratch) learns fastest at AdamW lr 1e-2: in a 2:15 budget
# 0.49 mAP against 0.44 at 6e-3 and 0.39 at 3e-3. centernet_n and yolov3_n (one positive per object, so a
# slower start) gain most from it: in the 4:30 budget centernet_n 0.354 mAP at 1e-2 against 0.177 at 3e-3,
# yolov3_n 0.219 against 0.137 (benchmarks/family_accuracy.py, 2-core AVX2). detforge_s and the edge
# detectors keep the 3e-3 their recipes were measured at. yolov3_n fits its anchors to the training boxes
# (its defaults are COCO's, scaled to 256 px, while the recipe trains at 128 px). detr_n takes DETR's
# published optimiser settings.
def model_recipe(name: str, weights: str | None = None) -> dict[str, Any]:
    """The model's training defaults from its registration (``register_model(..., recipe=...)``), with the
    fine-tuning recipe of its ``weights`` on top (:func:`detforge.models.registry.model_recipe`)."""
    from detforge.models.registry import model_recipe as registered

    return registered(name, weights)


# The fine-tuning recipe: chosen by ``--recipe auto`` (the default) when the backbone is pretrained
# (``pretrained`` in the model's kwargs or backbone config) and the data is not synthetic, or by
# ``--recipe finetune``; each entry applies unless the command line or a config file sets it. Every entry was
# measured against the value a run without it gets (``benchmarks/finetune.py --ablate``: MobileNetV2-FPN-256
# with a 4-conv head, 400 px, batch 4, 120 s from torchvision's ImageNet weights, ~110 optimizer steps as in
# a 12-minute run on a slower CPU; AP@[.5:.95] medians of 2, the recipe 0.761; docs/finetuning.md has the table):
# - AdamW lr 2e-3 (3e-3: -0.058 AP) with the backbone at 0.25x (1x: -0.020): the new FPN and head learn fast,
#   the ImageNet features move slowly instead of being overwritten by the first noisy steps;
# - frozen backbone BatchNorm (torchvision's detection recipe; -0.025 without): batches of 2-8 give poor
#   statistics;
# - the stem and the stride-4 stages frozen (detectron2's FREEZE_AT=2, torchvision's default trainable layers
#   on a ResNet; -0.066 AP and 0.75x the images/s without): backward stops before the costliest layers;
# - no colour jitter (-0.010 with it) and a mild zoom 0.75-1.25 (0.5-1.5: -0.021);
# - up to 300 detections per image: on crowded multi-class scenes (synthetic-dense, 5 classes, 20-80 objects)
#   the same checkpoint scores AP 0.075 / AP50 0.172 against 0.073 / 0.163 at 100 (COCO's AP keeps the best
#   100 per class, the model's cap is per image); no effect with one class;
# - decoded images cached in RAM (the loader's time per batch 10 against 23 ms at 400 px from 640 px JPEGs),
#   workers by CPU count (``data.num_workers auto``: none on 2 CPUs).
# ``--data.overhead true`` adds vertical flips and 90-degree rotations for aerial imagery (an option: it is
# wrong for street photos).
# Measured and left at the general defaults: 100 warmup steps (30 lost 0.024 AP), the EMA (0.99; off or a
# 30-step ramp changed AP by < 0.006); the cosine schedule ends with ``--trainer.max_time``
# (FitScheduleToTime, as in every run).
FINETUNE_RECIPE: dict[str, Any] = {
    "model.lr": 2e-3,
    "model.backbone_lr_mult": 0.25,
    "model.freeze_backbone_bn": True,
    "model.freeze_backbone_stride": 4,
    "model.max_detections_per_image": 300,
    "data.photometric": False,
    "data.scale_jitter": (0.75, 1.25),
    "data.cache": "ram",
    "data.num_workers": "auto",
}
RECIPES: dict[str, dict[str, Any]] = {"finetune": FINETUNE_RECIPE}
RecipeName = Literal["auto", "finetune", "none"]


def _get(obj: Any, key: str) -> Any:
    """``obj[key]`` / ``obj.key`` of a dict, jsonargparse Namespace or dataclass; None when absent."""
    if obj is None or isinstance(obj, str | bool | int | float):
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def pretrained_backbone(cfg) -> bool:
    """Whether the configured model starts from pretrained backbone weights: ``pretrained`` (True or a path)
    in ``model.model_kwargs``, in ``model.backbone`` (a ``FeatureBackboneConfig`` or its dict), or in a
    ``class_path`` model's ``init_args`` (or its backbone's)."""
    model = _get(cfg, "model")
    init_args = _get(_get(model, "model"), "init_args")
    candidates = [
        _get(_get(model, "model_kwargs"), "pretrained"),
        _get(_get(model, "backbone"), "pretrained"),
        _get(init_args, "pretrained"),
        _get(_get(init_args, "backbone"), "pretrained"),
    ]
    return any(value not in (None, False, "") for value in candidates)


def choose_recipe(cfg) -> tuple[str | None, str]:
    """The recipe ``cfg.recipe`` asks for (``auto``: ``finetune`` with a pretrained backbone on data that is
    not synthetic, else none) and why, for the log line."""
    asked = _get(cfg, "recipe") or "auto"
    if asked not in ("auto", "none", *RECIPES):
        raise ValueError(
            f"--recipe must be one of ('auto', 'none', {', '.join(map(repr, RECIPES))}), got {asked!r}"
        )
    if asked == "none":
        return None, "--recipe none"
    if asked != "auto":
        return asked, f"--recipe {asked}"
    if _get(_get(cfg, "model"), "weights") is not None:
        return None, "named weights: their own fine-tuning recipe"
    spec = _get(_get(cfg, "data"), "data")
    synthetic = isinstance(spec, str) and spec.startswith("synthetic")
    if pretrained_backbone(cfg) and not synthetic:
        return "finetune", "pretrained backbone, real data"
    return None, "from scratch" if not pretrained_backbone(cfg) else "synthetic data"


def apply_recipe(cfg, argv: list[str], name: str | None) -> list[str]:
    """Set the entries of recipe ``name`` (:data:`RECIPES`) that the command line does not give (none with a
    config file, which holds a whole run's values); returns the keys set."""
    given = _given_options(argv)
    if name is None or "config" in given:
        return []
    applied = [key for key in RECIPES[name] if key not in given]
    for key in applied:
        cfg[key] = RECIPES[name][key]
    return applied


def _given_options(argv: list[str]) -> set[str]:
    """Option names on an expanded command line (``--data.imgsz=128`` and ``--data.imgsz 128`` alike)."""
    return {arg.partition("=")[0][2:] for arg in argv if arg.startswith("--")}


def _data_module_defaults() -> dict[str, Any]:
    import inspect

    from detforge.data.datamodule import DetectionDataModule

    params = inspect.signature(DetectionDataModule.__init__).parameters
    return {key: params[key.split(".", 1)[1]].default for key in SYNTHETIC_ONLY}


def drop_synthetic_recipe(cfg, argv: list[str]) -> list[str]:
    """Reset the synthetic-only recipe keys for data other than the synthetic shapes (``synthetic-dense`` and
    ``synthetic-video`` included: their images, sizes and objects differ); returns the keys reset."""
    spec = cfg.data.data
    given = _given_options(argv)
    shapes = (
        isinstance(spec, str)
        and spec.startswith("synthetic")
        and not spec.startswith(("synthetic-dense", "synthetic-video"))
    )
    if not isinstance(spec, str) or shapes or "config" in given or "data" in given:
        return []
    reset = []
    for key, default in _data_module_defaults().items():
        if key not in given:
            cfg[key] = default
            reset.append(key)
    if "data.imgsz" in reset:
        cfg["model.imgsz"] = cfg["data.imgsz"]  # the link from data.imgsz was applied at parse time
    return reset


def apply_model_recipe(cfg, argv: list[str]) -> list[str]:
    """Set the chosen model's recipe entries (its registration's, and its weights' fine-tuning recipe) that the command line does not give (none when a
    config file is given); returns the keys set."""
    weights = _get(cfg.model, "weights")
    recipe = model_recipe(cfg.model.model, weights) if isinstance(cfg.model.model, str) else None
    given = _given_options(argv)
    if not recipe or "config" in given:
        return []
    applied = [key for key in recipe if key not in given]
    for key in applied:
        cfg[key] = recipe[key]
    if "data.imgsz" in applied:
        cfg["model.imgsz"] = cfg["data.imgsz"]  # the link from data.imgsz was applied at parse time
    return applied


def expand_aliases(argv: list[str]) -> list[str]:
    """Rewrite the short options to their full jsonargparse names (``--epochs=3`` too). ``--model`` and
    ``--data`` followed by a YAML / JSON file keep LightningCLI's meaning: a config file for that group."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if arg in FLAG_ALIASES:
            out.append(FLAG_ALIASES[arg])
        elif key in ALIASES:
            if not eq and i + 1 < len(argv):
                value, i = argv[i + 1], i + 1
            elif not eq:
                out.append(ALIASES[key])
                i += 1
                continue
            if key in ("--model", "--data") and value.lower().endswith(_CONFIG_SUFFIXES):
                out += [key, value]
            else:
                out += [ALIASES[key], value]
        else:
            out.append(arg)
        i += 1
    return out


def _ready(datamodule):
    datamodule.setup("fit")
    return datamodule


def _num_classes(datamodule) -> int:
    return _ready(datamodule).num_classes


def _class_names(datamodule) -> list[str]:
    return _ready(datamodule).class_names


def _in_chans(datamodule) -> int:
    """Image channels of the training data (3 RGB, 1 thermal), read from its first sample."""
    return int(_ready(datamodule).train_dataset[0][0].shape[0])


def _final_validation_callback():
    import lightning as L
    from lightning.pytorch.callbacks import Timer

    class ValidateLastEpoch(L.Callback):
        """Validate the last training epoch even when ``check_val_every_n_epoch`` would skip it, so every run
        ends with the COCO table: the epoch reaching ``max_epochs``, the batch reaching ``max_steps`` and the
        batch where ``max_time`` runs out."""

        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs:
                self._validate_this_epoch(trainer)

        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            if 0 < trainer.max_steps <= trainer.global_step:  # max_steps ends the run mid-epoch
                self._validate_this_epoch(trainer)
                trainer.should_stop = True  # Lightning validates a batch that stops the run
                return
            # Runs just before Lightning's Timer (appended after user callbacks) sets should_stop on this batch.
            for callback in trainer.callbacks:
                if isinstance(callback, Timer):
                    remaining = callback.time_remaining()
                    if remaining is not None and remaining <= 0:
                        self._validate_this_epoch(trainer)

        @staticmethod
        def _validate_this_epoch(trainer: L.Trainer) -> None:
            if trainer.check_val_every_n_epoch is not None:
                trainer.check_val_every_n_epoch = 1

    return ValidateLastEpoch()


def _make_cli_class(argv: list[str]):
    from lightning.pytorch.cli import LightningCLI

    from detforge.engine.trainer import default_callbacks, default_loggers, resolve_resume, resolve_run_dir

    class TrainCLI(LightningCLI):
        """LightningCLI with detforge's run folder, defaults and data -> model links."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument(
                "--name", type=str | None, default=None, help="run folder name (default exp, exp2, ...)"
            )
            parser.add_argument(
                "--project", type=str, default="runs/train", help="folder holding the run folders"
            )
            parser.add_argument(
                "--resume",
                type=str | None,
                default=None,
                help="continue from 'last' (this run's last.ckpt) or a path",
            )
            parser.add_argument(
                "--recipe",
                type=RecipeName,
                default="auto",
                help="training recipe: auto (finetune with a pretrained backbone on real data), finetune, none",
            )
            parser.link_arguments(
                "data", "model.num_classes", compute_fn=_num_classes, apply_on="instantiate"
            )
            parser.link_arguments(
                "data", "model.class_names", compute_fn=_class_names, apply_on="instantiate"
            )
            parser.link_arguments("data", "model.in_chans", compute_fn=_in_chans, apply_on="instantiate")
            parser.link_arguments("data.imgsz", "model.imgsz")
            parser.set_defaults(DEFAULTS)

        def before_instantiate_classes(self) -> None:
            cfg = self.config
            drop_synthetic_recipe(cfg, argv)
            applied_model = apply_model_recipe(cfg, argv)
            if applied_model and _get(cfg.model, "weights") is not None:
                values = ", ".join(f"{key}={cfg[key]}" for key in applied_model)
                print(f"recipe: {cfg.model.model} from weights {cfg.model.weights}: {values}", file=sys.stderr)
            recipe, why = choose_recipe(cfg)
            applied = apply_recipe(cfg, argv, recipe)
            if recipe is not None and "config" not in _given_options(argv):
                kept = sorted(set(RECIPES[recipe]) - set(applied))
                note = f"; kept from the command line: {', '.join(kept)}" if kept else ""
                print(f"recipe: {recipe} ({why}){note}", file=sys.stderr)
            self.run_dir = resolve_run_dir(cfg.project, cfg.name, exist_ok=cfg.resume is not None)
            self.ckpt_path = resolve_resume(cfg.resume, self.run_dir)
            cfg.resume = None  # the saved config.yaml starts a new run, it does not resume this one

        def instantiate_trainer(self, **kwargs: Any):
            trainer_cfg = self.config_init.get("trainer", {})
            progress = bool(trainer_cfg.get("enable_progress_bar", True)) if trainer_cfg else True
            if trainer_cfg.get("logger") in (None, True):
                kwargs.setdefault("logger", default_loggers(self.run_dir))
            user_callbacks = list(trainer_cfg.get("callbacks") or [])
            kwargs["callbacks"] = (
                default_callbacks(self.run_dir, progress_bar=progress)
                + user_callbacks
                + [_final_validation_callback()]
            )
            kwargs.setdefault("default_root_dir", str(self.run_dir))
            return super().instantiate_trainer(**kwargs)

    return TrainCLI


def build_cli(argv: list[str]):
    """Parse ``argv`` and build the model, data module and trainer (nothing runs yet)."""
    from detforge.data.datamodule import DetectionDataModule
    from detforge.models.detector import ObjectDetector

    argv = expand_aliases(argv)
    cli_class = _make_cli_class(argv)
    with warnings.catch_warnings():
        # argv comes from `detforge train ...`, not from sys.argv: LightningCLI's warning about that is moot
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        return cli_class(
            model_class=ObjectDetector,
            datamodule_class=DetectionDataModule,
            args=argv,
            run=False,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            parser_kwargs={"prog": "detforge train", "description": __doc__, "default_env": False},
        )


def main(argv: list[str]) -> int:
    from detforge.engine.trainer import run_dir_for_ranks

    cli = build_cli(list(argv))
    with run_dir_for_ranks(cli.run_dir):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.ckpt_path, weights_only=True)
    if cli.trainer.is_global_zero:
        print(f"run folder: {cli.run_dir}", file=sys.stderr)
    return 0

"""The backbone side of :class:`~detforge.models.detector.ObjectDetector`: the handles a fine-tuning user reaches
for (``backbone``, ``backbone_body``, ``freeze_backbone()`` / ``unfreeze_backbone()``) and the constructor's
freezing options (whole backbone, stages up to a stride, BatchNorm statistics)."""

from __future__ import annotations

from torch import nn

__all__ = ["BackboneTuning"]


class BackboneTuning:
    """Mixin of :class:`~detforge.models.detector.ObjectDetector` (reads ``self.model``)."""

    model: nn.Module
    training: bool

    def apply_backbone_options(
        self,
        freeze_backbone: bool,
        freeze_backbone_stride: int | None,
        freeze_backbone_bn: bool,
        backbone_lr_mult: float | None,
    ) -> None:
        """The constructor's options: freeze the whole backbone, or its stem and the stages up to
        ``freeze_backbone_stride``; BatchNorm statistics fixed (``freeze_backbone_bn``: timm's
        ``FrozenBatchNorm2d``, fused); a ValueError now when a model without a backbone gets any of them."""
        if freeze_backbone:
            self.freeze_backbone()
        elif freeze_backbone_stride is not None:
            from detforge.models.backbone import freeze_stages

            freeze_stages(self.backbone_body, freeze_backbone_stride)
        if not freeze_backbone and freeze_backbone_bn:
            from timm.utils.model import freeze_batch_norm_2d

            from detforge.models.frozen_norm import fuse_frozen_batchnorm

            body = self.backbone_body
            for name, child in list(body.named_children()):
                body.add_module(name, freeze_batch_norm_2d(child))
            fuse_frozen_batchnorm(body)
        if backbone_lr_mult is not None:
            self.backbone_body  # noqa: B018 (a ValueError now for a model without a backbone)

    @property
    def backbone(self) -> nn.Module:
        """The model's backbone (a ``backbone`` attribute, e.g. ``PyramidDetector.backbone``: the timm body)."""
        body = getattr(self.model, "backbone", None)
        if not isinstance(body, nn.Module):
            raise ValueError(f"model {type(self.model).__name__} has no backbone to freeze")
        return body

    @property
    def backbone_body(self) -> nn.Module:
        """The pretrained part of the backbone: the timm body of a ``FeatureBody`` / ``PyramidBackbone``
        (its ``body``, without the FPN), else :attr:`backbone` itself."""
        backbone = self.backbone
        body = getattr(backbone, "body", None)
        return body if isinstance(body, nn.Module) else backbone

    def freeze_backbone(self) -> None:
        """Freeze the backbone: no gradients, BatchNorm becomes ``FrozenBatchNorm2d`` (statistics fixed in
        ``train()`` too). Takes effect in the next ``trainer.fit`` (the optimizer skips frozen weights)."""
        from detforge.models.backbone import freeze_backbone

        freeze_backbone(self.backbone)

    def unfreeze_backbone(self) -> None:
        """Undo :meth:`freeze_backbone`: gradients on, ``FrozenBatchNorm2d`` back to training ``BatchNorm2d``
        (timm's ``unfreeze``). The next ``trainer.fit`` optimizes the backbone again."""
        from timm.utils.model import unfreeze

        unfreeze(self.backbone)
        self.backbone.train(self.training)

    def _backbone_body_prefix(self) -> str:
        """The parameter-name prefix of :attr:`backbone_body` inside the model (e.g. ``"features.body."``)."""
        body = self.backbone_body
        name = next(name for name, module in self.model.named_modules() if module is body)
        return f"{name}." if name else ""  # "": the whole model is the backbone

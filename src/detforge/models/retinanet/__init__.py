"""RetinaNet (Lin et al. 2017): the anchor-based one-stage family (model, head, losses, registrations)."""

from detforge.models.retinanet.head import RetinaNetHead
from detforge.models.retinanet.loss import RetinaNetLoss
from detforge.models.retinanet.model import RetinaNet, retinanet_anchor_sizes
from detforge.models.retinanet.zoo import build_retinanet, retinanet_n

__all__ = [
    "RetinaNet",
    "RetinaNetHead",
    "RetinaNetLoss",
    "build_retinanet",
    "retinanet_anchor_sizes",
    "retinanet_n",
]

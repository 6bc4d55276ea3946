"""torchvision's detection and segmentation models as networks a search can score, time and export.

A detector's final output (decoded boxes after non-maximum suppression) is a list of dicts of varying
length: no smooth distance compares two of them, and NMS is not what a factorisation changes. All the
convs, and all the run time but decoding and NMS, sit before it, so a detector is taken as
``RawDetector``: images in, the heads' raw outputs out, with the detector's own modules under their own
names (a plan written for it names ``backbone.…`` and ``head.…`` exactly as in torchvision's model).

- one-stage (SSD, SSDlite, RetinaNet, FCOS): the head's outputs, ``cls_logits`` and ``bbox_regression``
  (and FCOS's ``bbox_ctrness``); SSD's class scores are a softmax and compared as distributions;
- two-stage (Faster / Mask / Keypoint R-CNN): the region proposal head's ``objectness`` and
  ``bbox_deltas``, and the feature maps the box, mask and keypoint heads read (``features.*``). Those
  heads run on proposals, after NMS: their convs are not part of the network searched.

Inputs are images with pixels in [0, 1] at the fixed ``--input-shape``, normalised inside as the
detector's own transform does (its resizing is not applied: the shape given is the one run).
Segmentation models (FCN, DeepLabV3, LR-ASPP) already map a normalised image batch to a dict of
per-pixel class scores (``out``, ``aux``): they are used as they are, both outputs compared as
distributions over classes.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from dac_search.proxies.outputs import DISTRIBUTIONS_ATTRIBUTE

# The input sizes these detectors are built for (they resize every image to it); others need --input-shape.
DEFAULT_SHAPES = {"ssd300_vgg16": (1, 3, 300, 300), "ssdlite320_mobilenet_v3_large": (1, 3, 320, 320)}


def detection_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models.detection))


def segmentation_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models.segmentation))


class RawDetector(nn.Module):
    """A detector's backbone and heads, up to their raw outputs (see the module doc)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        transform = detector.transform
        self.register_buffer("mean", torch.tensor(transform.image_mean).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(transform.image_std).reshape(1, -1, 1, 1), persistent=False)
        self.backbone = detector.backbone
        if hasattr(detector, "head"):
            self.head = detector.head
        else:
            self.rpn = detector.rpn
        if type(detector).__name__ == "SSD":
            setattr(self, DISTRIBUTIONS_ATTRIBUTE, {"cls_logits": -1})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone((images - self.mean) / self.std)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        maps = list(features.values())
        if hasattr(self, "head"):
            return dict(self.head(maps))
        objectness, deltas = self.rpn.head(maps)
        return {"objectness": torch.cat([o.flatten(1) for o in objectness], 1),
                "bbox_deltas": torch.cat([d.flatten(1) for d in deltas], 1),
                **{f"features.{name}": value for name, value in features.items()}}


def as_searchable(spec: str, model: nn.Module) -> nn.Module:
    """The network a search works on for torchvision model ``spec``: a detector's ``RawDetector``, a
    segmentation model with its outputs declared distributions, anything else as it is."""
    if spec in detection_models():
        return RawDetector(model).eval()
    if spec in segmentation_models():
        setattr(model, DISTRIBUTIONS_ATTRIBUTE, {"out": 1, "aux": 1})
    return model

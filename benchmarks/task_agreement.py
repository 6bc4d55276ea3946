"""Detectors and segmenters without labels: how much of the model's own behaviour a plan keeps on real images.

    .venv/bin/python benchmarks/task_agreement.py --model ssd300_vgg16 [--weights DEFAULT]
        [--images assets/imagenet/sample_a.tsv] [--limit 100] [--ranks 4,3,2] [--input-shape 1,3,300,300]
        [--score 0.5] [--threads 2]

This is agreement with the original model, not mAP: no detection or segmentation labels are used. Per plan
(uniform DAC at each rank over every conv it can take but the first, refitted on synthetic inputs, rebuilt
from the plan by ``decompose_model`` as an export is):

- segmentation (FCN, DeepLabV3, LR-ASPP): the argmax masks of the decomposed model against the original's,
  pixel agreement and mean IoU over the classes either predicts;
- one-stage detection (SSD, SSDlite, RetinaNet, FCOS): the original's boxes scoring at least ``--score``,
  the share of them the decomposed model still finds (same label, IoU >= 0.5, one to one), and the share
  of the decomposed model's boxes that match one of the original's. The decomposed backbone and head go
  into the whole detector, with its own resizing, decoding and NMS.

Beside them, the search's proxy (KL or normalised squared error of the raw outputs on synthetic inputs)
and Spearman's rho between the proxy and the agreement over the plans: does the proxy rank plans the way
their behaviour on real images changes. Two-stage detectors are refused: their box heads' weights are not
part of the network searched.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ASSETS, markdown, split  # noqa: E402
from proxy_fidelity import spearman  # noqa: E402

from dac_search.allocate import allocate_uniform  # noqa: E402
from dac_search.cost import CostModel  # noqa: E402
from dac_search.eval_data import IMAGENET_MEAN, IMAGENET_STD, load_eval_data  # noqa: E402
from dac_search.proxies import default_proxy  # noqa: E402
from dac_search.proxies.apply import decompose_model  # noqa: E402
from dac_search.shapes import parse_shape  # noqa: E402
from dac_search.zoo import load_model  # noqa: E402
from dac_search.zoo.tasks import DEFAULT_SHAPES, RawDetector, detection_models, segmentation_models  # noqa: E402

MATCH_IOU = 0.5
_MEAN, _STD = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def images(path: Path, shape: tuple[int, ...], limit: int) -> torch.Tensor:
    """Real images at ``shape``'s size with pixels in [0, 1] (the detectors normalise inside)."""
    data = load_eval_data(path, IMAGENET_MEAN, IMAGENET_STD, size=shape[2:])
    x = torch.cat([batch for batch, _ in data.batches(64)])[:limit]
    return (x * _STD + _MEAN).clamp(0, 1)


def masks(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model((batch - _MEAN) / _STD)["out"].argmax(1) for batch in pixels.split(8)])


def mask_agreement(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    ious = []
    for label in torch.unique(torch.cat([reference.unique(), other.unique()])):
        a, b = reference == label, other == label
        ious.append(float((a & b).sum()) / max(1, int((a | b).sum())))
    return {
        "pixel agreement %": 100 * float((reference == other).float().mean()),
        "mask mIoU %": 100 * sum(ious) / len(ious),
    }


def detections(detector: nn.Module, pixels: torch.Tensor, score: float) -> list[dict[str, torch.Tensor]]:
    with torch.no_grad():
        found = [d for batch in pixels.split(8) for d in detector(list(batch))]
    return [{key: value[d["scores"] >= score] for key, value in d.items()} for d in found]


def _matched(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> int:
    """Boxes of ``reference`` matched one to one by a box of ``other`` with the same label, IoU >= 0.5."""
    from torchvision.ops import box_iou

    if len(reference["boxes"]) == 0 or len(other["boxes"]) == 0:
        return 0
    iou = box_iou(reference["boxes"], other["boxes"])
    iou[reference["labels"][:, None] != other["labels"][None, :]] = 0.0
    taken, count = set(), 0
    for row in iou:
        order = [j for j in torch.argsort(row, descending=True).tolist() if row[j] >= MATCH_IOU and j not in taken]
        if order:
            taken.add(order[0])
            count += 1
    return count


def box_agreement(reference: list[dict[str, torch.Tensor]], other: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    kept = sum(_matched(r, o) for r, o in zip(reference, other))
    matched_back = sum(_matched(o, r) for r, o in zip(reference, other))
    total, found = sum(len(r["boxes"]) for r in reference), sum(len(o["boxes"]) for o in other)
    return {"boxes kept %": 100 * kept / total if total else float("nan"),
            "boxes matching %": 100 * matched_back / found if found else float("nan")}


def whole_detector(spec: str, raw: RawDetector) -> nn.Module:
    """The torchvision detector with ``raw``'s backbone and head: its own resizing, decoding and NMS."""
    import torchvision

    detector = torchvision.models.get_model(spec, weights=None, weights_backbone=None).eval()
    detector.backbone, detector.head = raw.backbone, raw.head
    return detector


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a torchvision segmentation or one-stage detection model")
    parser.add_argument("--weights", default="DEFAULT", help="a weights name, a state-dict file, or none")
    parser.add_argument("--images", default=str(ASSETS / "imagenet" / "sample_a.tsv"))
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--ranks", default="4,3,2", help="uniform DAC ranks, one plan each")
    parser.add_argument("--input-shape", help="N,C,H,W (default: the detector's own size, 1,3,224,224 else)")
    parser.add_argument("--score", type=float, default=0.5, help="detections scoring at least this are compared")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = args.model
    detector = spec in detection_models()
    if not detector and spec not in segmentation_models():
        raise SystemExit(f"{spec} is neither a torchvision detection nor a segmentation model")
    model = load_model(spec, args.weights)
    if detector and not hasattr(model, "head"):
        raise SystemExit(f"{spec} is a two-stage detector: its box heads are not part of the network searched")
    shape = parse_shape(args.input_shape) if args.input_shape else DEFAULT_SHAPES.get(spec, (1, 3, 224, 224))
    pixels = images(Path(args.images), shape, args.limit)
    costs = CostModel(model, shape)
    proxy = default_proxy(model, shape, "refit")
    if detector:
        reference = detections(whole_detector(spec, model), pixels, args.score)
    else:
        reference = masks(model, pixels)
    rows, proxies, agreements = [], [], []
    for rank in (int(r) for r in split(args.ranks)):
        plan = replace(allocate_uniform(model, shape, rank, "dac"), model=spec, input_shape=shape,
                       correction="refit")
        score = proxy.score(plan).kl
        decomposed = decompose_model(model, plan)
        if detector:
            measured = box_agreement(reference, detections(whole_detector(spec, copy.deepcopy(decomposed)), pixels,
                                                           args.score))
        else:
            measured = mask_agreement(reference, masks(decomposed, pixels))
        first = next(iter(measured.values()))
        proxies.append(-score)
        agreements.append(first)
        rows.append([f"uniform DAC r={rank} + refit", f"{costs.cost(plan).flops / costs.baseline.flops:.1%}",
                     f"{score:.4f}", *(f"{value:.1f}" for value in measured.values())])
    what = (f"{sum(len(r['boxes']) for r in reference)} boxes of the original scoring >= {args.score}" if detector
            else f"{len(pixels)} masks of the original")
    print(f"**{spec}** ({args.weights} weights) on {len(pixels)} real images of {Path(args.images).name} at "
          f"{shape[2]}x{shape[3]}: agreement with the original's own output ({what}), not mAP\n")
    print(markdown(["plan", "FLOPs kept", "proxy", *measured], rows))
    if len(rows) > 2:
        print(f"\nSpearman rho between the proxy and {next(iter(measured))}: {spearman(proxies, agreements):.3f}")


if __name__ == "__main__":
    from _record import run

    run(main, __file__)

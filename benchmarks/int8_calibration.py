"""Which data-free calibration the int8 scheme defaults to: the original in int8, every conv, calibrated on
distilled images by each method, judged on real labelled images (the only place they are used).

    .venv/bin/python benchmarks/int8_calibration.py [--models cifar10-resnet20,cifar10-resnet56,mobilenet_v2]
        [--calibrations percentile:99.99,percentile:99.9,minmax,entropy] [--device local] [--images N]
        [--litert-device local-litert] [--rounding 100]

CIFAR ResNets are judged on the 5,000 shared CIFAR-10 test images, MobileNet-V2 on the 500 ImageNet images of
``sample_a``. Latency: each model's int8 file timed beside its fp32 original in one session (calibration
does not change the speed, so one per model). With ``--litert-device``, the same plan written for LiteRT
(min/max only: ``dac_search.int8_tflite``) is judged and timed beside the original's fp32 ``.tflite`` too.
With ``--rounding N``, each model also with its int8 weights' rounding learned (``dac_search.reconstruction
.rounding``, N steps a region on the reconstruction's synthetic images, min/max calibration), with the wall
time that took. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ASSETS, markdown, split  # noqa: E402
from latency_quality import file_top1, paired  # noqa: E402

from dac_search.eval_data import load_eval_data  # noqa: E402
from dac_search.export import export_onnx, export_tflite  # noqa: E402
from dac_search.plan import RankPlan  # noqa: E402
from dac_search.precision import QuantScheme  # noqa: E402
from dac_search.proxies.apply import decompose_model  # noqa: E402
from dac_search.proxies.calibration import every_conv_in_int8, quantized  # noqa: E402
from dac_search.proxies.synthetic import AUTO, resolve_kind  # noqa: E402
from dac_search.reconstruction.planning import default_settings  # noqa: E402
from dac_search.zoo import input_shape_of, load_model  # noqa: E402

WEIGHTS = {"mobilenet_v2": "IMAGENET1K_V1"}  # the weights among the assets


def eval_path(model: str) -> Path:
    return ASSETS / ("imagenet/sample_a.tsv" if model == "mobilenet_v2" else "cifar10/cifar10_test_a.npz")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cifar10-resnet20,cifar10-resnet56,mobilenet_v2")
    parser.add_argument("--calibrations", default="percentile:99.99,percentile:99.9,minmax,entropy")
    parser.add_argument("--device", default="local")
    parser.add_argument("--images", type=int, default=None, help="calibration images (default: the scheme's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--litert-device", default=None, help="also the minmax model in LiteRT, timed on this device")
    parser.add_argument("--rounding", type=int, default=0, help="also the minmax model with its rounding learned, "
                        "this many steps a region (0: not)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8-calibration-") as tmp:
        for spec in split(args.models):
            model = load_model(spec, WEIGHTS.get(spec)).eval()
            shape = tuple(input_shape_of(spec))
            data = load_eval_data(str(eval_path(spec)), size=shape[2:])
            original = export_onnx(model, Path(tmp) / f"{spec}.onnx", shape)
            fp32 = file_top1(original, data)
            convs = every_conv_in_int8(model)
            files = []
            for text in split(args.calibrations):
                method, _, percentile = text.partition(":")
                scheme = QuantScheme(calibration=method, percentile=float(percentile or 99.99), images=args.images)
                plan = RankPlan({}, spec, shape, precisions=convs, quantization=scheme)
                int8 = quantized(model, plan, model)
                path = int8.write_onnx(Path(tmp) / f"{spec}-{text.replace(':', '-')}.onnx")
                files.append(path)
                rows.append(_row(spec, "onnxruntime", text, scheme, fp32, file_top1(path, data)))
            if args.rounding:
                settings = replace(default_settings(shape, resolve_kind(model, AUTO, shape)), steps=0,
                                   rounding_steps=args.rounding)
                plan = RankPlan({}, spec, shape, precisions=convs, quantization=QuantScheme(images=args.images),
                                reconstruction=settings)
                started = time.perf_counter()
                int8 = decompose_model(model, plan)
                spent = time.perf_counter() - started
                path = int8.write_onnx(Path(tmp) / f"{spec}-rounded.onnx")
                files.append(path)
                rows.append(_row(spec, "onnxruntime", f"minmax, rounding learned ({args.rounding} steps a region, "
                                 f"{spent / 60:.1f} min)", plan.quantization, fp32, file_top1(path, data)))
            (ratio,) = paired(args.device, original, files[:1], shape)
            for row in rows[-len(files):]:
                row.append(f"{ratio:.3f}x ({args.device})")
            if args.litert_device:
                scheme = QuantScheme(images=args.images)
                int8 = quantized(model, RankPlan({}, spec, shape, precisions=convs, quantization=scheme), model)
                reference = export_tflite(model, Path(tmp) / f"{spec}.tflite", shape)
                path = int8.write_tflite(Path(tmp) / f"{spec}-int8.tflite")
                (ratio,) = paired(args.litert_device, reference, [path], shape)
                rows.append([*_row(spec, "litert", "minmax", scheme, file_top1(reference, data), file_top1(path, data)),
                             f"{ratio:.3f}x ({args.litert_device})"])
    print(f"### The original in int8 by calibration (data-free: distilled images), {args.device}, batch 1\n")
    print(markdown(["model", "runtime", "calibration", "images", "fp32 top-1 %", "int8 top-1 %", "drop (pts)",
                    "int8 latency vs fp32 (paired)"], rows))


def _row(spec: str, runtime: str, calibration: str, scheme: QuantScheme, fp32: float, top1: float) -> list[str]:
    return [spec, runtime, calibration, str(scheme.images or "default"), f"{fp32:.2f}", f"{top1:.2f}",
            f"{top1 - fp32:+.2f}"]


if __name__ == "__main__":
    from _record import run

    run(main, __file__)

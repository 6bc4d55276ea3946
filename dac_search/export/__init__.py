"""Models written for deployment: the formats (``formats``) and the export of a finished run's plan (``run``)."""

from __future__ import annotations

from dac_search.export.formats import (
    EXPORT_FORMATS,
    FORMATS,
    PT_FORMAT,
    export_for,
    export_model,
    export_onnx,
    export_pt,
    export_tflite,
    export_torchscript,
    format_of,
    load_pt_export,
)
from dac_search.onnx_file import ONNX_OPSET

__all__ = [
    "EXPORT_FORMATS", "FORMATS", "ONNX_OPSET", "PT_FORMAT", "export_for", "export_model", "export_onnx", "export_pt",
    "export_tflite", "export_torchscript", "format_of", "load_pt_export",
]

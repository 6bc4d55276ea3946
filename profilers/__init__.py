"""Latency measurement on real devices: one ``Profiler`` interface, local and SSH backends sharing one
runner script, device configs, and per-layer latency tables. Knows nothing of the search."""

from __future__ import annotations

from profilers.base import Conditions, LatencyResult, MeasureSettings, Profiler
from profilers.devices import DeviceConfig, devices_dir, list_devices, load_device, parse_device
from profilers.errors import (
    AuthFailed,
    BadModel,
    DeviceOutOfMemory,
    DeviceUnreachable,
    HostKeyMismatch,
    MeasurementTimeout,
    ProfilerError,
    RunnerFailed,
    RuntimeMissing,
    UnknownHost,
)
from profilers.factory import make_profiler
from profilers.latency_table import Correction, LatencyTable, default_candidates
from profilers.local import LocalProfiler
from profilers.ssh import SshProfiler
from profilers.table_builder import LatencyTableBuilder

__all__ = [
    "AuthFailed",
    "BadModel",
    "Conditions",
    "Correction",
    "DeviceConfig",
    "DeviceOutOfMemory",
    "DeviceUnreachable",
    "HostKeyMismatch",
    "LatencyResult",
    "LatencyTable",
    "LatencyTableBuilder",
    "LocalProfiler",
    "MeasureSettings",
    "MeasurementTimeout",
    "Profiler",
    "ProfilerError",
    "RunnerFailed",
    "RuntimeMissing",
    "SshProfiler",
    "UnknownHost",
    "default_candidates",
    "devices_dir",
    "list_devices",
    "load_device",
    "make_profiler",
    "parse_device",
]

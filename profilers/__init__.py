"""Latency measurement on real devices: one ``Profiler`` interface, local and SSH backends sharing one
runner script, device configs, pools of hosts. Imports nothing of dac_search: the per-layer latency tables,
which need plans and factorisations, are ``dac_search.latency``."""

from __future__ import annotations

from profilers.base import Conditions, LatencyResult, MeasureSettings, Profiler
from profilers.devices import DeviceConfig, devices_dir, list_devices, load_device, parse_device
from profilers.errors import (
    AuthFailed,
    BadModel,
    DeviceBusy,
    DeviceOutOfMemory,
    DeviceUnreachable,
    HostKeyMismatch,
    MeasurementTimeout,
    NoSftp,
    ProfilerError,
    RunnerFailed,
    RuntimeMissing,
    UnknownHost,
    UnsafeWorkdir,
)
from profilers.factory import make_profiler
from profilers.local import LocalProfiler
from profilers.ssh import SshProfiler

__all__ = [
    "AuthFailed",
    "BadModel",
    "Conditions",
    "DeviceBusy",
    "DeviceConfig",
    "DeviceOutOfMemory",
    "DeviceUnreachable",
    "HostKeyMismatch",
    "LatencyResult",
    "LocalProfiler",
    "MeasureSettings",
    "MeasurementTimeout",
    "Profiler",
    "ProfilerError",
    "RunnerFailed",
    "RuntimeMissing",
    "SshProfiler",
    "UnknownHost",
    "NoSftp",
    "UnsafeWorkdir",
    "devices_dir",
    "list_devices",
    "load_device",
    "make_profiler",
    "parse_device",
]

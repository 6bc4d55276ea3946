"""``dac-search devices``: list the configured devices; ``devices check NAME``: connect and describe one."""

from __future__ import annotations

import argparse

from rich.table import Table

from dac_search.commands._common import console
from profilers import devices_dir, list_devices, load_device, make_profiler
from profilers.devices import DEVICES_DIR_ENV
from profilers.runner import RUNTIMES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("devices", help="list the configured devices, or check one (devices check NAME)")
    actions = parser.add_subparsers(dest="action")
    check = actions.add_parser("check", help="connect to a device and print what it is")
    check.add_argument("device", help=f"a device name (from the list, or from ${DEVICES_DIR_ENV} when set) "
                                      f"or a path to a .toml file")
    check.add_argument("--runtime", choices=RUNTIMES,
                       help="the runtime to check (default: the config's)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "check":
        return _check(args.device, args.runtime)
    return _list()


def _list() -> int:
    devices = list_devices()
    table = Table(title=f"devices in {devices_dir()}")
    for column in ("name", "kind", "host", "runtime", "threads", "python", "description"):
        table.add_column(column, no_wrap=column not in ("description",))
    for device in devices:
        table.add_row(device.name, device.kind, ", ".join(device.hosts) or "-", device.runtime,
                      str(device.threads or "auto"), device.python_path, device.description)
    console().print(table)
    if not devices:
        console().print(f"no device configs found; set {DEVICES_DIR_ENV} to a directory of .toml files "
                        f"or pass --device path/to/device.toml")
    return 0


def _check(name: str, runtime: str | None) -> int:
    config = load_device(name)
    with make_profiler(config) as profiler:
        info = profiler.info(runtime=runtime)
    conditions = info.get("conditions", {})
    table = Table(title=f"device {config.name}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("kind", info.get("kind")),
        ("connected to", info.get("target", "this machine")),
        ("hostname", info.get("hostname")),
        ("system", f"{info.get('system')} {info.get('machine')}"),
        ("cpu", conditions.get("cpu_model")),
        ("cores", info.get("cpu_count")),
        ("pinned cpus", ",".join(map(str, info.get("cpus", []))) or "-"),
        ("python", f"{info.get('python')} ({info.get('python_version')})"),
        ("runtime", f"{info.get('runtime')} {info.get('runtime_version')}"),
        ("threads", info.get("threads") or "runtime default"),
        ("governor", conditions.get("governor")),
        ("frequency", f"{conditions['freq_mhz']:.0f} MHz" if conditions.get("freq_mhz") else None),
        ("temperature", f"{conditions['temp_c']:.1f} °C" if conditions.get("temp_c") is not None else None),
        ("throttled", conditions.get("throttled")),
    ]
    for field, value in rows:
        table.add_row(field, "-" if value is None else str(value))
    console().print(table)
    return 0

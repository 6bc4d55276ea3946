"""Device configs: the shipped ones load, and every mistake is a ConfigError naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from profilers import LocalProfiler, SshProfiler, devices, devices_dir, list_devices, load_device, make_profiler
from profilers.errors import DeviceConfigError


def test_shipped_devices_load() -> None:
    names = {device.name for device in list_devices()}
    assert {"local", "pi4", "loopback"} <= names
    pi4 = load_device("pi4")
    assert pi4.kind == "ssh" and pi4.hosts == ("pi4",) and pi4.user == "pi" and pi4.threads == 4
    assert pi4.python_path == "/usr/bin/python3" and pi4.runtime == "onnxruntime" and pi4.host_key == "strict"
    assert isinstance(make_profiler(load_device("local")), LocalProfiler)
    assert isinstance(make_profiler(load_device("loopback")), SshProfiler)  # lazy: does not connect


def test_load_by_path_and_env_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "box.toml").write_text('kind = "ssh"\nhosts = ["a", "b"]\ncpus = "0-2,5"\n')
    config = load_device(tmp_path / "box.toml")
    assert config.name == "box" and config.hosts == ("a", "b") and config.cpus == (0, 1, 2, 5)
    monkeypatch.setenv("DAC_SEARCH_DEVICES_DIR", str(tmp_path))
    assert devices_dir() == tmp_path and load_device("box") == config
    assert [d.name for d in list_devices()] == ["box"]


def test_shipped_configs_are_found_in_a_checkout_and_in_an_installed_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAC_SEARCH_DEVICES_DIR", raising=False)
    assert devices_dir() == Path(__file__).resolve().parents[2] / "configs" / "devices"  # checkout, editable
    installed = tmp_path / "site-packages" / "profilers"  # a wheel: configs/ is inside the package
    (installed / "configs" / "devices").mkdir(parents=True)
    monkeypatch.setattr(devices, "__file__", str(installed / "devices.py"))
    assert devices_dir() == installed / "configs" / "devices"


def test_relative_key_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "d.toml").write_text('kind = "ssh"\nhost = "h"\nkey = "keys/id"\n')
    assert load_device(tmp_path / "d.toml").key == tmp_path / "keys" / "id"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('kind = "ssh"\nhost = "h"\npassword = "hunter2"\n', "password: passwords are never read"),
        ('kind = "cloud"\n', "kind: must be one of local, ssh"),
        ('kind = "ssh"\n', "host: missing"),
        ('kind = "ssh"\nhost = "a"\nhosts = ["b"]\n', "hosts: give either"),
        ('kind = "ssh"\nhosts = []\n', "hosts: must be a non-empty list"),
        ('kind = "ssh"\nhost = "h"\nport = 70000\n', "port: must be between 1 and 65535"),
        ('kind = "ssh"\nhost = "h"\nhost_key = "yolo"\n', "host_key: must be one of strict, accept-new"),
        ('kind = "local"\nhost = "h"\n', 'host: unknown key (only for kind = "ssh")'),
        ('threads = "four"\n', "threads: must be an integer"),
        ('threads = 0\n', "threads: must be >= 1"),
        ('cpus = "zero"\n', "cpus: must look like"),
        ('runtime = "tflite"\n', "runtime: must be one of onnxruntime, torch, litert"),
        ('timeout_s = -1\n', "timeout_s: must be a positive number"),
        ('timeout_s = nan\n', "timeout_s: must be a positive number, got nan"),
        ('timeout_s = inf\n', "timeout_s: must be a positive number, got inf"),
        ('[measure]\nwarmup_s = nan\n', "measure.warmup_s: must be a non-negative number, got nan"),
        ('[measure]\nrepeats = inf\n', "measure.repeats: must be a non-negative number, got inf"),
        ('kind = "ssh"\nhost = "h"\nworkdir = ""\n', "workdir: must name a directory of its own"),
        ('kind = "ssh"\nhost = "h"\nworkdir = "~"\n', "workdir: must name a directory of its own"),
        ('colour = "blue"\n', "colour: unknown key"),
        ('[measure]\nrepeats = 1\n', "measure.repeats: must be an integer >= 2"),
        ('[measure]\nwarmup = 1\n', "measure.warmup: unknown key"),
        ('kind = "local"\nkind = "ssh"\n', "not valid TOML"),
    ],
)
def test_bad_config_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(DeviceConfigError) as info:
        load_device(path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert info.value.exit_code == 2


def test_unknown_device_name_lists_the_known_ones() -> None:
    with pytest.raises(DeviceConfigError, match="unknown device 'nope'.*pi4"):
        load_device("nope")


def test_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "d.toml").write_text(f'kind = "ssh"\nhost = "127.0.0.1"\nkey = "{tmp_path}/absent"\n')
    with (
        make_profiler(load_device(tmp_path / "d.toml")) as profiler,
        pytest.raises(DeviceConfigError, match="absent does not exist"),
    ):
        profiler.info()


def test_host_not_in_pool(tmp_path: Path) -> None:
    (tmp_path / "d.toml").write_text('kind = "ssh"\nhosts = ["a", "b"]\n')
    with pytest.raises(DeviceConfigError, match="not one of"):
        make_profiler(load_device(tmp_path / "d.toml"), host="c")

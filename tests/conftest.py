"""Shared fixtures: the real assets beside the checkout (CIFAR-10, the BN-free CIFAR net, MobileNet-V2 and
ImageNet images), and torch.hub's cache seeded from them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.postgres import PostgresServer, postgres_server, server_binaries

ASSETS = Path(os.environ.get("DAC_SEARCH_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
CIFAR = ASSETS / "cifar10"
NOBN_WEIGHTS = ASSETS / "cifar10-nobn" / "cifar_net-d75fd60a.pth"
IMAGENET = ASSETS / "imagenet"
NOBN_SPEC = f"{Path(__file__).resolve().parents[1] / 'benchmarks' / 'nets.py'}:cifar_nobn"  # the net's architecture
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def cli_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The command's exit code and stderr, run in this process: a refusal of bad input is decided before any
    work, so an interpreter start-up (3 s of imports) would cost more than the test and check nothing more.
    Other tests run the real console script."""
    from dac_search.cli import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def require(condition: bool, reason: str) -> None:
    """Skip with a visible reason on a dev machine; fail in CI, where everything must be present."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on 127.0.0.1, a throwaway cluster for the whole session."""
    bin_dir = server_binaries()
    require(bin_dir is not None, "PostgreSQL's server is not installed (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        require(False, "psycopg is not installed (pip install 'dac-search[postgres]')")
    with postgres_server(bin_dir) as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def private_caches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic inputs, sensitivities and latency tables cached per test session, never in ~/.cache."""
    root = tmp_path_factory.mktemp("dac_search_cache")
    os.environ["DAC_SEARCH_CACHE"] = str(root)
    os.environ["DAC_SEARCH_LATENCY_CACHE"] = str(root / "latency")
    return root


@pytest.fixture(scope="session")
def cifar_assets() -> Path:
    require((CIFAR / "cifar10_test_a.npz").exists(), f"CIFAR-10 assets not found at {CIFAR}")
    return CIFAR


@pytest.fixture(scope="session")
def nobn_weights() -> Path:
    require(NOBN_WEIGHTS.is_file(), f"the BN-free CIFAR-10 net's weights not found at {NOBN_WEIGHTS}")
    return NOBN_WEIGHTS


@pytest.fixture(scope="session")
def imagenet_assets() -> Path:
    require((IMAGENET / "sample_a.tsv").is_file(), f"the ImageNet assets not found at {IMAGENET}")
    return IMAGENET


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory: pytest.TempPathFactory, cifar_assets: Path) -> Path:
    """A TORCH_HOME whose hub cache holds the CIFAR ResNet checkpoints and torchvision's MobileNet-V2 file,
    as a download would leave them."""
    home = tmp_path_factory.mktemp("torch_home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for checkpoint in [*cifar_assets.glob("*.th"), *IMAGENET.glob("*.pth")]:
        shutil.copy(checkpoint, checkpoints / checkpoint.name)
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = previous


@pytest.fixture(scope="session")
def cifar_test(cifar_assets: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 real CIFAR-10 test images, normalised as the checkpoints expect, and their labels."""
    data = np.load(cifar_assets / "cifar10_test_a.npz")
    x = torch.from_numpy(data["x"]).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return x, torch.from_numpy(data["y"])


def top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    with torch.no_grad():
        predictions = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((predictions == y).float().mean()) * 100


@pytest.fixture()
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of its own, with the session's synthetic images linked in (they are not what is tested)."""
    root = tmp_path / "cache"
    root.mkdir()
    (root / "synthetic").symlink_to(Path(os.environ["DAC_SEARCH_CACHE"]) / "synthetic", target_is_directory=True)
    (Path(os.environ["DAC_SEARCH_CACHE"]) / "synthetic").mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("DAC_SEARCH_CACHE", str(root))
    return root

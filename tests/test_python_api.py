"""The README's Python loop, run as written, and the API's answers in library terms."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import dac_search

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_loop() -> str:
    text = README.read_text()
    section = text[text.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]  # type: ignore[index]


@pytest.mark.slow  # over 10 s here
def test_the_readmes_python_loop_runs_as_written(hub_cache, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(_readme_loop(), str(README), "exec"), scope)  # noqa: S102 - the README's own code
    run, again = scope["run"], scope["again"]
    assert isinstance(run, dac_search.Run) and isinstance(again, dac_search.Run)
    assert len(run.trials) == 20 and run.front is not None and len(run.front) >= 1
    # by default the front is judged on twice the 64 images the search scores with
    judged = run.front["agreement_held_out"].dropna()
    assert run.info.proxy.agreement_images == 128 and 1 <= len(judged) <= 8 and judged.between(0, 1).all()
    best = scope["best"]
    assert best in set(run.front["trial"]) and again.best() == best
    model, plan = scope["model"], scope["plan"]
    assert isinstance(model, torch.nn.Module) and plan.layers  # the best plan changes layers
    assert (tmp_path / "resnet20-60.onnx").stat().st_size > 0
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert dac_search.open_run(tmp_path / "reports" / "py-demo").info.n_trials == 20


def test_search_errors_name_keywords_not_flags(tmp_path) -> None:
    with pytest.raises(dac_search.ConfigError, match="unknown setting 'trails'"):
        dac_search.search("cifar10-resnet20", budget="50%flops", device="none", trails=3)
    with pytest.raises(dac_search.ConfigError, match=r"^proxy_images must be at least 2"):
        dac_search.search("cifar10-resnet20", budget="50%flops", device="none", proxy_images=1, out=tmp_path / "r")
    with pytest.raises(dac_search.ConfigError, match="does not exist"):
        dac_search.open_run(tmp_path / "nothing")


def test_the_package_keeps_search_as_the_function_after_its_subpackage_is_imported() -> None:
    import dac_search.search.controller  # noqa: F401 - a submodule imported after the package

    assert callable(dac_search.search) and dac_search.search.__module__ == "dac_search.api"
    assert set(dac_search.__all__) >= {"search", "open_run", "Run", "decompose_model", "read_run"}

"""The front judged on held-out synthetic images: agreement of the exported model, in whole images."""

from __future__ import annotations

import torch
from torch import nn

from dac_search.search.held_out import BATCH, HeldOut


class Logits(nn.Module):
    def __init__(self, flip: int = 0) -> None:
        super().__init__()
        self.flip = flip  # this many leading images get another argmax than the original's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], 1)
        return torch.cat([logits[:self.flip].flip(1), logits[self.flip:]]) if self.flip else logits


def held_out(n: int) -> HeldOut:
    inputs = torch.randn(n, 3, 8, 8)
    original = Logits()
    reference = tuple(original(batch) for batch in inputs.split(BATCH))
    return HeldOut(inputs, reference, {"output": 1})


def test_agreement_counts_whole_images_over_every_batch() -> None:
    judged = held_out(BATCH + 36)  # two batches of unequal size
    assert judged.n == BATCH + 36 and judged.agreement(Logits()) == 1.0
    # a model that disagrees on the first 10 images of each batch it sees
    assert judged.agreement(Logits(flip=10)) == (BATCH + 36 - 20) / (BATCH + 36)


class _Pooled(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


def test_an_output_without_a_distribution_has_no_agreement() -> None:
    inputs = torch.randn(4, 3, 8, 8)
    judged = HeldOut(inputs, (inputs.mean((2, 3)),), {})  # a feature map, not a distribution
    assert judged.agreement(_Pooled()) is None


def test_without_labels_the_best_feasible_points_are_judged_and_with_labels_every_point() -> None:
    from dac_search.rundir import TrialRow
    from dac_search.search.held_out import worth_judging

    front = [TrialRow(t, "COMPLETE", feasible, proxy, flops=100 - t, plan=f"plans/trial-{t}.json")
             for t, feasible, proxy in ((0, True, 0.5), (1, False, 0.1), (2, True, 0.2), (3, True, 0.9),
                                        (4, True, 0.3))]
    assert [row.trial for row in worth_judging(front, None, 3)] == [2, 4, 0]  # feasible, lowest proxy first
    assert worth_judging(front, object(), 3) == front  # type: ignore[arg-type]  # labelled data: all of them

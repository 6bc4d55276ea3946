"""Inner-width pruning: keep r of a conv's output channels, removing work instead of adding operators.

A *producer* conv is prunable when its output goes only through a BatchNorm2d and/or a ReLU (ReLU6) into
exactly one conv with groups == 1 (its *consumer*): ``layerX.Y.conv1`` of a CIFAR BasicBlock, ``conv1`` and
``conv2`` of a torchvision Bottleneck. Depthwise convs on the way (one filter per channel, each with its
BatchNorm and activation) are passed *through*: the expansion conv of a MobileNet-V2 inverted residual is
a producer, its depthwise 3x3 goes with it, the projection is the consumer. Then channel j of the producer,
of its BatchNorm and of everything passed through, and input channel j of the consumer can go together and
the rest of the network never sees a difference in shape. A conv whose
output meets a residual add (or a pool, a concat, the model's output) is refused: removing its channels
would change the width of everything the add joins. The structure is read from one ``torch.fx`` trace
(``dac_search.decompose.graph``).

Channel j's importance is ``|gamma_j| * ||W_consumer[:, j]||`` (gamma the weight of the last BatchNorm
before the consumer; without one, the producer's output filter norm takes its place): how much of the
consumer's input it can carry. (The spread of the channel's activation of N(beta_j, gamma_j^2), which
discounts a channel its BatchNorm shifts below zero before a ReLU, ranks better uncorrected but worse with
the default refit: ResNet-56 at half width 84.30% against 86.74%, MobileNet-V2 alike within noise.) The
top r are kept in their original order. The pruned model is made of plain, smaller ``nn.Conv2d`` and
``nn.BatchNorm2d`` modules, so it exports and runs as an ordinary network. Nothing here corrects the
result (``dac_search.decompose_model`` refits the consumers when the plan asks for ``refit``).

Rank 0 removes the whole residual branch (the limit of pruning): where the consumer's output, through its
BatchNorm, goes only into a residual add whose other operand is the branch's own input carried by
parameter-free operations (identity, option A's slice and zero pad; not a projection), the branch is
replaced by a constant per channel. The producer becomes ``RemovedBranch`` (a one-channel zero map), the
consumer ``BranchConstant``, their BatchNorms identities. Uncorrected, the constant is what the branch
gives for zero input; a correction sets it to the branch's mean output on the synthetic inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from dac_search.decompose.graph import PruneSite, check_site, is_depthwise, prune_sites
from dac_search.errors import PlanError


@dataclass(frozen=True)
class Pruning:
    """A checked set of prunings of one model: which channels every pruned producer keeps."""

    sites: Mapping[str, PruneSite]
    keep: Mapping[str, torch.Tensor]  # producer -> kept output channels, ascending

    @property
    def removed(self) -> dict[str, PruneSite]:
        """Producer -> site, for every branch removed (rank 0)."""
        return {name: site for name, site in self.sites.items() if len(self.keep[name]) == 0}

    def kept_inputs(self) -> dict[str, torch.Tensor]:
        """Consumer -> the input channels it keeps (a removed branch's consumer is not listed)."""
        return {site.consumer: self.keep[name] for name, site in self.sites.items() if name not in self.removed}

    def modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """The sliced producers, BatchNorms and consumers, and the stand-ins of removed branches, by name
        (``model`` is left untouched)."""
        inputs = self.kept_inputs()
        removed = self.removed
        out: dict[str, nn.Module] = {}
        for name in (*(n for n in self.keep if n not in removed), *inputs):
            out[name] = slice_conv(model.get_submodule(name), self.keep.get(name), inputs.get(name))
        for name, site in self.sites.items():
            if name in removed:
                out.update(_removed_branch(model, site))
                continue
            if site.norm is not None:
                out[site.norm] = slice_norm(model.get_submodule(site.norm), self.keep[name])
            for depthwise, norm in site.through:
                out[depthwise] = slice_conv(model.get_submodule(depthwise), self.keep[name])
                if norm is not None:
                    out[norm] = slice_norm(model.get_submodule(norm), self.keep[name])
        return out

    def apply(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` with the sliced modules in place."""
        modules = self.modules(model)
        out = copy.deepcopy(model)
        for name, module in modules.items():
            out.set_submodule(name, module)
        return out


class RemovedBranch(nn.Module):
    """A removed branch's producer: zeros, one channel at the branch's output size, that the operations up
    to the consumer (BatchNorm gone, ReLU) leave zero and the consumer's ``BranchConstant`` turns into its
    constant. Shapes follow the input, so any batch and image size work as before."""

    def __init__(self, stride: tuple[int, int]) -> None:
        super().__init__()
        self.stride = tuple(int(v) for v in stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1, :: self.stride[0], :: self.stride[1]] * 0.0


class BranchConstant(nn.Module):
    """A removed branch's output: one value per channel everywhere (``dac_search.decompose_model`` sets it
    to the branch's mean output on the synthetic inputs; uncorrected, to what the branch gives for zeros)."""

    def __init__(self, value: torch.Tensor, stride: tuple[int, int]) -> None:
        super().__init__()
        self.bias = nn.Parameter(value.detach().clone(), requires_grad=False)
        self.stride = tuple(int(v) for v in stride)

    def forward(self, zeros: torch.Tensor) -> torch.Tensor:
        return zeros[:, :, :: self.stride[0], :: self.stride[1]] + self.bias.view(1, -1, 1, 1)


def branch_constant(model: nn.Module, site: PruneSite, consumer_mean: torch.Tensor | None = None) -> torch.Tensor:
    """The constant a removed branch outputs: the consumer's BatchNorm applied to the consumer's mean output
    (``consumer_mean``; None: the consumer's output for zero input, its bias)."""
    consumer = model.get_submodule(site.consumer)
    value = consumer_mean.detach().to(consumer.weight.dtype) if consumer_mean is not None else (
        consumer.bias.detach() if consumer.bias is not None else consumer.weight.new_zeros(consumer.out_channels))
    if site.consumer_norm is not None:
        norm = model.get_submodule(site.consumer_norm)
        value = (value - norm.running_mean) * (norm.running_var + norm.eps).rsqrt()
        if norm.weight is not None:
            value = value * norm.weight.detach() + norm.bias.detach()
    return value.detach()


def _removed_branch(model: nn.Module, site: PruneSite) -> dict[str, nn.Module]:
    producer, consumer = model.get_submodule(site.producer), model.get_submodule(site.consumer)
    out: dict[str, nn.Module] = {site.producer: RemovedBranch(producer.stride),
                                 site.consumer: BranchConstant(branch_constant(model, site), consumer.stride)}
    for norm in (site.norm, site.consumer_norm):
        if norm is not None:
            out[norm] = nn.Identity()
    return out


PRUNE_SHARES = tuple(i / 8 for i in range(1, 8))  # the widths a search offers: 1/8 .. 7/8 of the channels


def prune_ranks(width: int) -> list[int]:
    """Output channels a search may keep of a producer ``width`` wide (every share of ``PRUNE_SHARES``)."""
    return sorted({max(1, round(width * share)) for share in PRUNE_SHARES} - {width})


def check_width(name: str, rank: int, width: int, site: PruneSite) -> None:
    """``rank`` channels can be kept: 1..width, or 0 where the branch can be removed."""
    if rank == 0 and not site.removable:
        raise PlanError(f"layer {name!r}: prune at rank 0 removes the residual branch, which needs a shortcut "
                        f"that carries the signal without parameters; here {site.removal}")
    if not 0 <= rank <= width:
        raise PlanError(f"layer {name!r}: prune keeps 1..{width} output channels (0 removes the branch), got {rank}")


def hidden_importance(model: nn.Module, site: PruneSite) -> torch.Tensor:
    """|gamma_j| * ||W_consumer[:, j]|| per output channel j of the producer (why: see the module doc)."""
    consumer = model.get_submodule(site.consumer).weight.detach()
    reach = consumer.transpose(0, 1).reshape(consumer.shape[1], -1).norm(dim=1)
    norm = model.get_submodule(site.last_norm) if site.last_norm else None
    if norm is not None and norm.weight is not None:
        scale = norm.weight.detach().abs()
    elif norm is not None:  # a non-affine BatchNorm normalises every channel alike
        scale = torch.ones_like(reach)
    else:
        producer = model.get_submodule(site.producer).weight.detach()
        scale = producer.reshape(producer.shape[0], -1).norm(dim=1)
    return (scale * reach).double()


def kept_channels(model: nn.Module, site: PruneSite, rank: int) -> torch.Tensor:
    """The ``rank`` most important output channels of the producer, in their original order (ties: lower first)."""
    order = torch.argsort(-hidden_importance(model, site), stable=True)
    return order[:rank].sort().values


def plan_pruning(model: nn.Module, ranks: Mapping[str, int],
                 sites: Mapping[str, PruneSite | str] | None = None) -> Pruning:
    """Check ``ranks`` (producer -> output channels kept) against ``model`` and pick the channels."""
    if not ranks:
        return Pruning({}, {})
    sites = prune_sites(model) if sites is None else sites
    chosen: dict[str, PruneSite] = {}
    keep: dict[str, torch.Tensor] = {}
    for name, rank in ranks.items():
        site = check_site(sites, name)
        check_width(name, rank, model.get_submodule(name).out_channels, site)
        chosen[name] = site
        keep[name] = kept_channels(model, site, rank)
    return Pruning(chosen, keep)


def prune_model(model: nn.Module, ranks: Mapping[str, int]) -> nn.Module:
    """A deep copy of ``model`` with every producer in ``ranks`` pruned to that many output channels."""
    return plan_pruning(model, ranks).apply(model)


def slice_conv(conv: nn.Conv2d, out_keep: torch.Tensor | None = None,
               in_keep: torch.Tensor | None = None) -> nn.Conv2d:
    """A plain conv of ``conv``'s geometry holding only the kept output and input channels (groups == 1),
    or, for a depthwise conv, only the kept channels (``out_keep``: its inputs go with its outputs)."""
    weight = conv.weight.detach()
    if out_keep is not None:
        weight = weight[out_keep]
    if in_keep is not None:
        weight = weight[:, in_keep]
    groups = weight.shape[0] if is_depthwise(conv) else conv.groups
    out = nn.utils.skip_init(nn.Conv2d, weight.shape[1] * groups, weight.shape[0], conv.kernel_size,
                             stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=groups,
                             bias=conv.bias is not None, padding_mode=conv.padding_mode,
                             device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if conv.bias is not None:
            out.bias.copy_(conv.bias.detach() if out_keep is None else conv.bias.detach()[out_keep])
    out.requires_grad_(conv.weight.requires_grad)
    return out.train(conv.training)


def slice_norm(norm: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    """The BatchNorm of the kept channels: affine parameters and running statistics sliced alike."""
    out = nn.BatchNorm2d(len(keep), eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                         track_running_stats=norm.track_running_stats,
                         device=keep.device if norm.weight is None else norm.weight.device,
                         dtype=None if norm.weight is None else norm.weight.dtype)
    with torch.no_grad():
        for key, tensor in norm.state_dict().items():
            target = getattr(out, key)
            target.copy_(tensor if tensor.ndim == 0 else tensor[keep])
    if norm.weight is not None:
        out.requires_grad_(norm.weight.requires_grad)
    return out.train(norm.training)

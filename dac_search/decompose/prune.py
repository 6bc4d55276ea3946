"""Inner-width pruning: keep r of a conv's output channels, removing work instead of adding operators.

A *producer* conv is prunable when its output goes only through a BatchNorm2d and/or a ReLU (ReLU6) into
exactly one conv with groups == 1 (its *consumer*): ``layerX.Y.conv1`` of a CIFAR BasicBlock, ``conv1`` and
``conv2`` of a torchvision Bottleneck. Then channel j of the producer, its BatchNorm and input channel j of
the consumer can go together and the rest of the network never sees a difference in shape. A conv whose
output meets a residual add (or a pool, a concat, the model's output) is refused: removing its channels
would change the width of everything the add joins. The structure is read from ``torch.fx.symbolic_trace``.

Channel j's importance is ``|gamma_j| * ||W_consumer[:, j]||`` (gamma the BatchNorm weight; without one,
the producer's output filter norm takes its place): how much of the consumer's input it can carry. The
top r are kept in their original order. The pruned model is made of plain, smaller ``nn.Conv2d`` and
``nn.BatchNorm2d`` modules, so it exports and runs as an ordinary network. Nothing here corrects the
result (``dac_search.decompose_model`` refits the consumers when the plan asks for ``refit``).
"""

from __future__ import annotations

import copy
import operator
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from dac_search.errors import PlanError

RULE = ("prune takes a conv whose output goes only through a BatchNorm2d and/or a ReLU into exactly one conv "
        "with groups=1")
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6)
_ACTIVATION_FUNCTIONS = (F.relu, F.relu6, torch.relu, torch.relu_)
_ACTIVATION_METHODS = ("relu", "relu_")


@dataclass(frozen=True)
class PruneSite:
    """A producer conv, the BatchNorm after it (if any), its one consumer conv and the BatchNorm after that.

    ``consumer_norm``: a BatchNorm2d with running statistics that alone reads the consumer's output; a
    refitted consumer's bias is folded into it, so the pruned model keeps the original's parameters.
    """

    producer: str
    norm: str | None
    consumer: str
    consumer_norm: str | None = None


@dataclass(frozen=True)
class Pruning:
    """A checked set of prunings of one model: which channels every pruned producer keeps."""

    sites: Mapping[str, PruneSite]
    keep: Mapping[str, torch.Tensor]  # producer -> kept output channels, ascending

    def kept_inputs(self) -> dict[str, torch.Tensor]:
        """Consumer -> the input channels it keeps."""
        return {site.consumer: self.keep[name] for name, site in self.sites.items()}

    def modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """The sliced producers, BatchNorms and consumers, by name (``model`` is left untouched)."""
        inputs = self.kept_inputs()
        out: dict[str, nn.Module] = {}
        for name in (*self.keep, *inputs):
            out[name] = slice_conv(model.get_submodule(name), self.keep.get(name), inputs.get(name))
        for name, site in self.sites.items():
            if site.norm is not None:
                out[site.norm] = slice_norm(model.get_submodule(site.norm), self.keep[name])
        return out

    def apply(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` with the sliced modules in place."""
        modules = self.modules(model)
        out = copy.deepcopy(model)
        for name, module in modules.items():
            out.set_submodule(name, module)
        return out


def _trace(model: nn.Module) -> fx.Graph:
    try:
        return fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises anything from TraceError to whatever the forward does with a Proxy
        first = (str(exc).strip().splitlines() or [""])[0]
        raise PlanError(f"cannot tell which convs can be pruned: torch.fx cannot trace this model "
                        f"({type(exc).__name__}: {first[:200]})") from None


def _describe(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(modules[str(node.target)]).__name__})"
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        return f"{name} (a residual add)" if node.target in (operator.add, torch.add, operator.iadd) else name
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "output":
        return "the model's output"
    return str(node.target)


def _is_activation(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], _ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in _ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in _ACTIVATION_METHODS


def _sole_user(node: fx.Node, what: str, modules: Mapping[str, nn.Module]) -> fx.Node | str:
    """The one node reading ``node``'s value, or why there is not exactly one."""
    users = list(node.users)
    if len(users) != 1:
        names = ", ".join(_describe(user, modules) for user in users) or "nothing"
        return f"{what} is read by {len(users)} operations ({names}), not by one conv"
    return users[0]


def _site(name: str, node: fx.Node, modules: Mapping[str, nn.Module], calls: Counter[str]) -> PruneSite | str:
    """The prune site starting at producer ``node``, or why ``name`` is not a producer."""
    conv = modules[name]
    if calls[name] > 1:
        return f"the conv is called {calls[name]} times"
    if conv.groups != 1:
        return f"it is a grouped conv (groups={conv.groups}), whose output channels cannot go one by one"
    norm: str | None = None
    user = _sole_user(node, "its output", modules)
    if isinstance(user, fx.Node) and user.op == "call_module" and isinstance(modules[str(user.target)],
                                                                             nn.BatchNorm2d):
        norm = str(user.target)
        if calls[norm] > 1:
            return f"its BatchNorm {norm} is called {calls[norm]} times"
        user = _sole_user(user, f"the output of {norm}", modules)
    if isinstance(user, fx.Node) and _is_activation(user, modules):
        user = _sole_user(user, "the activation's output", modules)
    if isinstance(user, str):
        return user
    module = modules.get(str(user.target)) if user.op == "call_module" else None
    if not isinstance(module, nn.Conv2d):
        after = f"after {norm} " if norm else ""
        return f"{after}its output goes into {_describe(user, modules)}, not into exactly one conv"
    consumer = str(user.target)
    if calls[consumer] > 1:
        return f"its consumer {consumer} is called {calls[consumer]} times"
    if module.groups != 1:
        return f"its consumer {consumer} is a grouped conv (groups={module.groups})"
    return PruneSite(name, norm, consumer, _norm_after(user, modules, calls))


def _norm_after(node: fx.Node, modules: Mapping[str, nn.Module], calls: Counter[str]) -> str | None:
    user = _sole_user(node, "", modules)
    if not isinstance(user, fx.Node) or user.op != "call_module":
        return None
    norm = modules[str(user.target)]
    if isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats and calls[str(user.target)] == 1:
        return str(user.target)
    return None


def prune_sites(model: nn.Module) -> dict[str, PruneSite | str]:
    """Every conv of ``model`` in graph order: its prune site, or why it cannot be pruned."""
    graph = _trace(model)
    modules = dict(model.named_modules())
    calls = Counter(str(node.target) for node in graph.nodes if node.op == "call_module")
    out: dict[str, PruneSite | str] = {}
    for node in graph.nodes:
        name = str(node.target)
        if node.op == "call_module" and isinstance(modules.get(name), nn.Conv2d) and name not in out:
            out[name] = _site(name, node, modules, calls)
    return out


def check_site(sites: Mapping[str, PruneSite | str], name: str) -> PruneSite:
    """The site of producer ``name``, or one PlanError line saying why it cannot be pruned."""
    site = sites.get(name, "the traced model never runs it")
    if isinstance(site, str):
        raise PlanError(f"layer {name!r} cannot be pruned: {site}; {RULE}")
    return site


PRUNE_SHARES = tuple(i / 8 for i in range(1, 8))  # the widths a search offers: 1/8 .. 7/8 of the channels


def prune_ranks(width: int) -> list[int]:
    """Output channels a search may keep of a producer ``width`` wide (every share of ``PRUNE_SHARES``)."""
    return sorted({max(1, round(width * share)) for share in PRUNE_SHARES} - {width})


def check_width(name: str, rank: int, width: int) -> None:
    if not 1 <= rank <= width:
        raise PlanError(f"layer {name!r}: prune keeps 1..{width} output channels, got {rank}")


def hidden_importance(model: nn.Module, site: PruneSite) -> torch.Tensor:
    """|gamma_j| * ||W_consumer[:, j]|| per output channel j of the producer (why: see the module doc)."""
    consumer = model.get_submodule(site.consumer).weight.detach()
    reach = consumer.transpose(0, 1).reshape(consumer.shape[1], -1).norm(dim=1)
    norm = model.get_submodule(site.norm) if site.norm else None
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
        check_width(name, rank, model.get_submodule(name).out_channels)
        chosen[name] = site
        keep[name] = kept_channels(model, site, rank)
    return Pruning(chosen, keep)


def prune_model(model: nn.Module, ranks: Mapping[str, int]) -> nn.Module:
    """A deep copy of ``model`` with every producer in ``ranks`` pruned to that many output channels."""
    return plan_pruning(model, ranks).apply(model)


def slice_conv(conv: nn.Conv2d, out_keep: torch.Tensor | None = None,
               in_keep: torch.Tensor | None = None) -> nn.Conv2d:
    """A plain conv of ``conv``'s geometry holding only the kept output and input channels (groups == 1)."""
    weight = conv.weight.detach()
    if out_keep is not None:
        weight = weight[out_keep]
    if in_keep is not None:
        weight = weight[:, in_keep]
    out = nn.utils.skip_init(nn.Conv2d, weight.shape[1], weight.shape[0], conv.kernel_size, stride=conv.stride,
                             padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
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

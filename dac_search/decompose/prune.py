"""Inner-width pruning: keep r of a conv's output channels, removing work instead of adding operators.

A *producer* conv is prunable when its output goes only through a BatchNorm2d and/or a ReLU (ReLU6) into
exactly one conv with groups == 1 (its *consumer*): ``layerX.Y.conv1`` of a CIFAR BasicBlock, ``conv1`` and
``conv2`` of a torchvision Bottleneck. Depthwise convs on the way (one filter per channel, each with its
BatchNorm and activation) are passed *through*: the expansion conv of a MobileNet-V2 inverted residual is
a producer, its depthwise 3x3 goes with it, the projection is the consumer. Then channel j of the producer,
of its BatchNorm and of everything passed through, and input channel j of the consumer can go together and
the rest of the network never sees a difference in shape. A conv whose
output meets a residual add (or a pool, a concat, the model's output) is refused: removing its channels
would change the width of everything the add joins. The structure is read from ``torch.fx.symbolic_trace``.

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
import operator
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from dac_search.errors import PlanError

RULE = ("prune takes a conv whose output goes only through a BatchNorm2d and/or a ReLU (and depthwise convs "
        "with theirs) into exactly one conv with groups=1")
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6)
_ACTIVATION_FUNCTIONS = (F.relu, F.relu6, torch.relu, torch.relu_)
_ACTIVATION_METHODS = ("relu", "relu_")


@dataclass(frozen=True)
class PruneSite:
    """A producer conv, the BatchNorm after it (if any), its one consumer conv and the BatchNorm after that.

    ``consumer_norm``: a BatchNorm2d with running statistics that alone reads the consumer's output; a
    refitted consumer's bias is folded into it, so the pruned model keeps the original's parameters.
    ``removal``: why the branch cannot be removed (rank 0), or "" where it can.
    ``through``: the depthwise convs between producer and consumer, in order, each with its BatchNorm.
    """

    producer: str
    norm: str | None
    consumer: str
    consumer_norm: str | None = None
    removal: str = "the branch was not checked"
    through: tuple[tuple[str, str | None], ...] = ()

    @property
    def last_norm(self) -> str | None:
        """The BatchNorm right before the consumer: what its input channels' scale is read off."""
        return self.through[-1][1] if self.through else self.norm

    @property
    def removable(self) -> bool:
        return not self.removal


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
    norm, user = _walk(node, "its output", modules, calls)
    passed: list[tuple[str, str | None]] = []
    while isinstance(user, fx.Node) and _is_depthwise(user, modules):
        depthwise = str(user.target)
        if calls[depthwise] > 1:
            return f"the depthwise conv {depthwise} after it is called {calls[depthwise]} times"
        depthwise_norm, user = _walk(user, f"the output of {depthwise}", modules, calls)
        passed.append((depthwise, depthwise_norm))
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
    consumer_norm = _norm_after(user, modules, calls)
    end = next(iter(user.users)) if consumer_norm else user
    removal = ("its branch passes through a depthwise conv" if passed
               else _removal(node, end, (conv, module), modules))
    return PruneSite(name, norm, consumer, consumer_norm, removal, tuple(passed))


def _walk(node: fx.Node, what: str, modules: Mapping[str, nn.Module],
          calls: Counter[str]) -> tuple[str | None, fx.Node | str]:
    """From a conv's output through its optional BatchNorm and activation: the BatchNorm, and the next
    node or why there is not exactly one."""
    norm: str | None = None
    user = _sole_user(node, what, modules)
    if isinstance(user, fx.Node) and user.op == "call_module" and isinstance(modules[str(user.target)],
                                                                             nn.BatchNorm2d):
        norm = str(user.target)
        if calls[norm] > 1:
            return norm, f"the BatchNorm {norm} is called {calls[norm]} times"
        user = _sole_user(user, f"the output of {norm}", modules)
    if isinstance(user, fx.Node) and _is_activation(user, modules):
        user = _sole_user(user, "the activation's output", modules)
    return norm, user


def _is_depthwise(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    return node.op == "call_module" and is_depthwise(modules[str(node.target)])


def is_depthwise(module: nn.Module) -> bool:
    """One filter per channel, as many outputs as inputs: channel j depends on channel j alone."""
    return (isinstance(module, nn.Conv2d) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


_ADDS = (operator.add, operator.iadd, torch.add)
_PARAMETER_FREE_DEPTH = 8  # a shortcut is a handful of parameter-free ops (option A: slice and pad)


def _removal(producer: fx.Node, end: fx.Node, convs: tuple[nn.Conv2d, nn.Conv2d],
             modules: Mapping[str, nn.Module]) -> str:
    """Why the branch from ``producer`` to ``end`` cannot be replaced by a constant, or "" where it can:
    its output must go only into a residual add whose other operand is the branch's own input, reached
    through parameter-free operations only (identity, option A's slice and zero pad)."""
    users = list(end.users)
    add = users[0] if len(users) == 1 else None
    is_add = add is not None and ((add.op == "call_function" and add.target in _ADDS)
                                  or (add.op == "call_method" and add.target in ("add", "add_")))
    if not is_add or len(add.args) < 2:
        return "its branch does not end in a residual add"
    others = [arg for arg in add.args[:2] if arg is not end]
    if len(others) != 1 or not isinstance(others[0], fx.Node):
        return "its branch is added to itself or to a constant, not to a shortcut"
    source = producer.args[0]
    if not _parameter_free_path(others[0], source, modules, _PARAMETER_FREE_DEPTH):
        return "the shortcut it is added to has parameters (a projection) or does not start at the branch's input"
    for conv in convs:  # the stand-ins subsample by the stride: right only for 'same' padding
        same = conv.padding == "same" if isinstance(conv.padding, str) else all(
            2 * p == d * (k - 1) for k, p, d in zip(conv.kernel_size, conv.padding, conv.dilation))
        if not same:
            return "a conv of its branch does not keep the spatial size ('same' padding)"
    return ""


def _parameter_free_path(node: fx.Node, source: object, modules: Mapping[str, nn.Module], depth: int) -> bool:
    """``node`` is ``source`` or computed from it alone by at most ``depth`` parameter-free operations."""
    if node is source:
        return True
    if depth == 0 or node.op not in ("call_function", "call_method", "call_module"):
        return False
    if node.op == "call_module":
        module = modules[str(node.target)]
        if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            return False
    inputs = node.all_input_nodes
    return len(inputs) == 1 and _parameter_free_path(inputs[0], source, modules, depth - 1)


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
    return _sites(_trace(model), dict(model.named_modules()))


def _sites(graph: fx.Graph, modules: Mapping[str, nn.Module]) -> dict[str, PruneSite | str]:
    calls = Counter(str(node.target) for node in graph.nodes if node.op == "call_module")
    out: dict[str, PruneSite | str] = {}
    for node in graph.nodes:
        name = str(node.target)
        if node.op == "call_module" and isinstance(modules.get(name), nn.Conv2d) and name not in out:
            out[name] = _site(name, node, modules, calls)
    return out


@dataclass(frozen=True)
class Shortcut:
    """The parameter-free shortcut a residual branch is added to: the add computes
    ``norm(consumer(...)) + path(x)``, ``x`` the branch's input (the producer's input)."""

    producer: str
    consumer: str
    norm: str | None  # the consumer's BatchNorm, between it and the add
    path: fx.GraphModule  # x -> the shortcut's value (identity, option A's subsample and pad, ...)


def residual_shortcuts(model: nn.Module) -> dict[str, Shortcut]:
    """Consumer -> its shortcut, for every removable branch (a prune site whose branch can go at rank 0):
    the branches whose last conv can be fitted to the residual stream rather than to its own output."""
    graph = _trace(model)
    modules = dict(model.named_modules())
    nodes = {str(node.target): node for node in graph.nodes if node.op == "call_module"}
    out: dict[str, Shortcut] = {}
    for site in _sites(graph, modules).values():
        if isinstance(site, str) or not site.removable:
            continue
        end = nodes[site.consumer_norm] if site.consumer_norm else nodes[site.consumer]
        add = next(iter(end.users))
        other = next(arg for arg in add.args[:2] if arg is not end)
        source = nodes[site.producer].args[0]
        out[site.consumer] = Shortcut(site.producer, site.consumer, site.consumer_norm,
                                      _path_module(model, other, source))
    return out


def _path_module(model: nn.Module, end: fx.Node, source: fx.Node) -> fx.GraphModule:
    """The parameter-free chain of one-input nodes from ``source`` to ``end`` as a module of its own."""
    chain = []
    node = end
    while node is not source:
        chain.append(node)
        node = node.all_input_nodes[0]
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {source: graph.placeholder("x")}
    for node in reversed(chain):
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(env[end])
    return fx.GraphModule(model, graph)


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

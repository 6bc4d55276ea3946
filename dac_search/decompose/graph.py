"""A model's structure as the search reads it, from one ``torch.fx`` trace per model: every conv's prune site
(or why it has none) and the parameter-free shortcut of every removable residual branch.

The cost model, the proxy, the latency table's builder, ``plan_pruning`` (run for every plan that prunes) and
``dac-search decompose`` each need it; ``model_graph`` traces a model once and hands every one of them the same
``ModelGraph``. It is remembered per model object, and traced again if a submodule has been swapped since
(``set_submodule``), so a model changed in place is never read from a stale graph. Why a conv can or cannot be
pruned: ``dac_search.decompose.prune``.
"""

from __future__ import annotations

import operator
import threading
import weakref
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

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
    assert isinstance(conv, nn.Conv2d), name  # _sites hands only convs
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
    if add is None or not is_add or len(add.args) < 2:
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


def _shortcuts(graph: fx.Graph, model: nn.Module, sites: Mapping[str, PruneSite | str]) -> dict[str, Shortcut]:
    nodes = {str(node.target): node for node in graph.nodes if node.op == "call_module"}
    out: dict[str, Shortcut] = {}
    for site in sites.values():
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


@dataclass(frozen=True)
class ModelGraph:
    """What one trace of a model says: ``sites``, every conv in graph order with its prune site or why it cannot
    be pruned; ``shortcuts``, consumer -> the shortcut of every removable branch (a site whose branch can go at
    rank 0), the branches whose last conv ``stream`` fits to the residual stream; ``untraceable``, why torch.fx
    could not trace the model ("" where it could; then both are empty)."""

    sites: Mapping[str, PruneSite | str]
    shortcuts: Mapping[str, Shortcut]
    untraceable: str = ""

    def check(self) -> ModelGraph:
        """The graph, or the PlanError of a model torch.fx cannot trace."""
        if self.untraceable:
            raise PlanError(self.untraceable)
        return self


_GRAPHS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, ModelGraph]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()  # a remote device's table is built beside the host's distillation


def model_graph(model: nn.Module) -> ModelGraph:
    """``model``'s graph, traced on first use and shared afterwards (see the module docstring)."""
    key = tuple((name, id(module)) for name, module in model.named_modules())
    with _LOCK:
        known = _GRAPHS.get(model)
        if known is not None and known[0] == key:
            return known[1].check()
    try:
        graph = _trace(model)
    except PlanError as error:
        found = ModelGraph(MappingProxyType({}), MappingProxyType({}), str(error))
    else:
        sites = _sites(graph, dict(model.named_modules()))
        found = ModelGraph(MappingProxyType(sites), MappingProxyType(_shortcuts(graph, model, sites)))
    with _LOCK:
        _GRAPHS[model] = (key, found)
    return found.check()


def prune_sites(model: nn.Module) -> dict[str, PruneSite | str]:
    """Every conv of ``model`` in graph order: its prune site, or why it cannot be pruned."""
    return dict(model_graph(model).sites)


def residual_shortcuts(model: nn.Module) -> dict[str, Shortcut]:
    """Consumer -> its shortcut, for every removable branch (``ModelGraph.shortcuts``)."""
    return dict(model_graph(model).shortcuts)

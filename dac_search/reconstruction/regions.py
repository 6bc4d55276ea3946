"""The regions a network is reconstructed by: the stretches between the points where one tensor carries
everything the rest of the network needs.

Found on the fx graph, for any CNN fx can trace: after a node, if it is the only value computed so far
that a later node still reads, the network can be cut there. A residual block (CIFAR ResNet, torchvision's
``BasicBlock`` and ``Bottleneck``) ends at the addition (or the ReLU after it), an inverted residual at its
addition, and a plain chain could be cut after every op. Cut by ``blocks`` (the default), such a point is
kept only where the module holding the ops changes (the outermost one that is not a plain container): a
non-residual ``InvertedResidual`` or a ``Conv2dNormActivation`` is one region, so its BatchNorm and
activation are fitted through, as BRECQ fits blocks; cut by ``ops``, every such point is a cut. A region
runs on its own from the tensor at the cut before it, so it can be fitted alone: its input from the
plan's own network, its target the original network's output at the same cut.

The plan's network and the original are traced alike (the factorised layers, removed branches and
BatchNorm stand-ins are leaves, called where the original's convs were), so their nodes pair by name.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn

from dac_search.decompose.layers import FactorizedConv2d
from dac_search.decompose.prune import BranchConstant, RemovedBranch
from dac_search.errors import ConfigError

LEAVES = (FactorizedConv2d, RemovedBranch, BranchConstant)
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)  # hold blocks; a subclass (Conv2dNormActivation) is one


class _Tracer(fx.Tracer):
    """torch.fx's tracer with the plan's stand-in modules kept whole, as torch's own modules are."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, LEAVES) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """The graph of ``model`` sharing its modules (training the graph trains ``model``)."""
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises anything from TraceError to whatever the forward does with a Proxy
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"cannot reconstruct this model: torch.fx cannot trace it "
                          f"({type(exc).__name__}: {first[:200]})") from None
    return fx.GraphModule(model, graph)


@dataclass(frozen=True)
class Region:
    """Nodes ``names`` run in order from the value of node ``start`` (the cut before them); ``modules``: the
    qualified names of the modules they call."""

    start: str
    names: tuple[str, ...]
    modules: tuple[str, ...]


class RegionRunner:
    """Runs one region of a traced network at a time, from the tensor at the cut before it."""

    def __init__(self, graph_module: fx.GraphModule) -> None:
        self.graph_module = graph_module
        self._nodes = {node.name: node for node in graph_module.graph.nodes}
        self._interpreter = fx.Interpreter(graph_module, garbage_collect_values=False)

    def run(self, region: Region, x: torch.Tensor) -> torch.Tensor:
        interpreter = self._interpreter
        interpreter.env = {self._nodes[region.start]: x}
        try:
            for name in region.names:
                node = self._nodes[name]
                interpreter.env[node] = interpreter.run_node(node)
            return interpreter.env[self._nodes[region.names[-1]]]
        finally:
            interpreter.env = {}

    def parameters(self, region: Region) -> Iterator[nn.Parameter]:
        """The weights of the modules the region calls, each once."""
        seen: set[int] = set()
        for name in region.modules:
            for parameter in self.graph_module.get_submodule(name).parameters():
                if id(parameter) not in seen:
                    seen.add(id(parameter))
                    yield parameter


def regions_of(graph: fx.Graph, granularity: str = "blocks") -> list[Region]:
    """The graph cut where one value carries everything that follows (``ops``: at every such point;
    ``blocks``: where the block holding the ops changes too)."""
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    output = next(n for n in nodes if n.op == "output")
    if len(placeholders) != 1:
        raise ConfigError(f"cannot reconstruct a model with {len(placeholders)} inputs: one image tensor is needed")
    position = {node: i for i, node in enumerate(nodes)}
    last_read = {node: max((position[u] for u in node.users), default=position[node]) for node in nodes}
    regions: list[Region] = []
    start, pending = placeholders[0], []
    live: set[fx.Node] = {start}
    body = [n for n in nodes if n.op not in ("placeholder", "output")]
    for node, following in zip(body, [*body[1:], None]):
        pending.append(node)
        live.add(node)
        live = {n for n in live if last_read[n] > position[node] or n is node}
        if live == {node} and (granularity == "ops" or following is None or _splits(node, following)):
            regions.append(_region(start, pending))
            start, pending = node, []
    if pending or not regions or regions[-1].names[-1] != getattr(output.args[0], "name", None):
        raise ConfigError("cannot reconstruct this model: its output is not a single tensor computed last")
    return regions


def _block(node: fx.Node) -> str | None:
    """The outermost module holding ``node`` that is not a plain container (None: the network's own code)."""
    for path, kind in (node.meta.get("nn_module_stack") or {}).values():
        if not (isinstance(kind, type) and kind in CONTAINERS):
            return path
    return None


def _splits(node: fx.Node, following: fx.Node) -> bool:
    block = _block(node)
    return block is None or block != _block(following)


def _region(start: fx.Node, nodes: Sequence[fx.Node]) -> Region:
    modules = tuple(dict.fromkeys(str(n.target) for n in nodes if n.op == "call_module"))
    return Region(start.name, tuple(n.name for n in nodes), modules)


def check_reconstructable(model: nn.Module) -> None:
    """Raise ``ConfigError`` (one line) if ``model`` cannot be cut into regions to reconstruct."""
    regions_of(trace(model).graph)


def paired_regions(original: nn.Module, model: nn.Module, example: torch.Tensor, granularity: str = "blocks"
                   ) -> tuple[RegionRunner, RegionRunner, list[Region]]:
    """Runners of ``original`` and of ``model`` (the plan's network), and the regions both are cut into:
    the original's, joined across every cut where the plan's tensor has another shape than the original's
    (a pruned width that a plain chain passes from one conv to the next), found by running ``example``."""
    theirs, ours = trace(original), trace(model)
    names = [n.name for n in theirs.graph.nodes]
    if names != [n.name for n in ours.graph.nodes]:
        raise ConfigError("cannot reconstruct this plan: its network's graph does not follow the original's")
    first, second = RegionRunner(theirs), RegionRunner(ours)
    return first, second, _joined_where_shapes_differ(first, second, regions_of(theirs.graph, granularity), example)


@torch.no_grad()
def _joined_where_shapes_differ(theirs: RegionRunner, ours: RegionRunner, regions: list[Region],
                                example: torch.Tensor) -> list[Region]:
    joined: list[Region] = []
    pending: Region | None = None
    a = b = example
    for region in regions:
        a, b = theirs.run(region, a), ours.run(region, b)
        pending = region if pending is None else Region(
            pending.start, pending.names + region.names, tuple(dict.fromkeys(pending.modules + region.modules)))
        if a.shape == b.shape:
            joined.append(pending)
            pending = None
    if pending is not None:
        raise ConfigError("cannot reconstruct this plan: its output has another shape than the original's")
    return joined

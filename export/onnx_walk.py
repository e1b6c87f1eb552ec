"""Walking an ONNX graph backwards: which node makes a value, and whether a value is computed from
another one. One implementation for the export's graph cuts (the prior split), the quantization
plan's rules and the tests that look at ONNX Runtime's optimised graphs."""

from __future__ import annotations

from collections.abc import Callable

import onnx


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Each node output's name -> the node that makes it."""
    return {o: n for n in graph.node for o in n.output}


def computed_from(made_by: dict[str, onnx.NodeProto], name: str, source: str, depth: int,
                  through: Callable[[onnx.NodeProto], bool] = lambda node: True) -> bool:
    """Whether the value ``name`` is ``source``, or is made from it by at most ``depth`` nodes, each
    of which ``through`` accepts (a walk from ``name`` towards the graph's inputs).

    Args:
        made_by: :func:`producers` of the graph.
        name: the value to start from.
        source: a graph input's, an initializer's or a node output's name.
        depth: how many nodes the walk may pass.
        through: which nodes the walk may pass (all, by default).
    """
    if name == source:
        return True
    node = made_by.get(name)
    return (depth > 0 and node is not None and through(node)
            and any(computed_from(made_by, i, source, depth - 1, through) for i in node.input if i))

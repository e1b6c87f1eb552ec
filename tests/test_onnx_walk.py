"""The backwards walk the prior split, the quantization rules and the tests share."""

from __future__ import annotations

from onnx import TensorProto, helper

from sccan.export.onnx_walk import computed_from, producers


def _graph():
    # x -> Relu -> a; a, w -> MatMul -> b; b, y -> Add -> c
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("MatMul", ["a", "w"], ["b"]),
             helper.make_node("Add", ["b", "y"], ["c"])]
    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 2]) for n in ("x", "w", "y")]
    return helper.make_graph(nodes, "walk", values, [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, 2])])


def test_computed_from_follows_producers_within_the_depth_and_the_nodes_it_may_pass():
    graph = _graph()
    made_by = producers(graph)
    assert {k: v.op_type for k, v in made_by.items()} == {"a": "Relu", "b": "MatMul", "c": "Add"}
    assert computed_from(made_by, "c", "x", 3) and computed_from(made_by, "c", "c", 0)
    assert not computed_from(made_by, "c", "x", 2)  # three nodes apart
    assert computed_from(made_by, "c", "y", 1) and not computed_from(made_by, "a", "y", 5)
    assert not computed_from(made_by, "c", "x", 3, through=lambda node: node.op_type != "MatMul")
    assert computed_from(made_by, "c", "y", 3, through=lambda node: node.op_type != "MatMul")

"""Per-token int8 rewrite of a float ONNX encoder: the `auto` int8 file (docs/models.md, "int8").

Every MatMul whose weight is a 2-D float initializer becomes an integer matmul on int8 weights with
one scale per output column, fed with activations quantised with one scale *per token row*:

    s  = max|x| over the hidden axis / 127                       (one scale per row of x)
    xq = uint8(round(x / s) + 128)                                (symmetric; zero point 128 for MLAS' u8s8 path)
    y  = MatMulInteger(xq, Wq, 128) * s * w_scale

Why per row: onnxruntime's `quantize_dynamic` takes one activation scale over the whole
[batch, sequence, hidden] tensor, padding included, so a text's vector depended on the texts batched
with it and the encoder had to run text by text. Here each row's result depends on that row alone,
so batching (and padding) leaves every vector exactly as it is alone, and `OnnxEncoder` batches.
The activation x activation matmuls of attention (Q.K^T, P.V) stay float.

Matmuls that read the same input (a layer's Q, K and V projections) share one quantised input and
run as one MatMulInteger on the concatenated weights, split afterwards. The word-embedding table
(Gather on a large float initializer) is stored as int8 rows with one scale per row.
Deterministic: the same float file gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import GraphProto, NodeProto, TensorProto, helper, numpy_helper

_EMBED_MIN_ROWS = 4096  # a Gather table this large is the vocabulary (positions/token types are small)


def quantize_per_token(src: Path, dst: Path) -> Path:
    """Write the per-token int8 rewrite of the float graph `src` to `dst` (atomically); returns `dst`."""
    model = onnx.load(str(src))
    _Rewriter(model.graph).run()
    tmp = Path(dst).with_suffix(".onnx.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(dst)
    return Path(dst)


class _Rewriter:
    """One pass over a graph: quantised inputs, merged integer matmuls, the int8 embedding table."""

    def __init__(self, graph: GraphProto) -> None:
        self.graph = graph
        self.floats = {i.name: numpy_helper.to_array(i) for i in graph.initializer
                       if i.data_type == 1 and len(i.dims) == 2}
        self.nodes: list[NodeProto] = []
        self.inits: list[TensorProto] = []
        self.quantised: dict[str, tuple[str, str]] = {}
        self.c127 = self.const("pt_c127", np.array(127.0, np.float32))
        self.c_inv127 = self.const("pt_inv127", np.array(1.0 / 127.0, np.float32))
        self.zero_point = self.const("pt_zp", np.array(128, np.uint8))
        self.eps = self.const("pt_eps", np.array(1e-30, np.float32))
        self.one = self.const("pt_one", np.array(1.0, np.float32))

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def run(self) -> None:
        """Rewrite the graph in place (node order kept: every group is emitted at its first member)."""
        groups = self._groups()
        emitted: set[str] = set()
        for node in self.graph.node:
            key = self._weight_matmul_input(node)
            if key is not None:
                group = groups[key]
                if node.name not in emitted:
                    self._emit_group(key, group)
                    emitted.update(n.name for n in group)
                continue
            if self._is_embedding(node):
                self._emit_embedding(node)
                continue
            self.nodes.append(node)
        used = {name for node in self.nodes for name in node.input}
        keep = [i for i in [*self.graph.initializer, *self.inits] if i.name in used]  # float weights go
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)

    def _weight_matmul_input(self, node: NodeProto) -> str | None:
        """The activation input of a MatMul by a 2-D float weight, else None."""
        if node.op_type == "MatMul" and node.input[1] in self.floats:
            return node.input[0]
        return None

    def _groups(self) -> dict[str, list[NodeProto]]:
        groups: dict[str, list[NodeProto]] = {}
        for node in self.graph.node:
            key = self._weight_matmul_input(node)
            if key is not None:
                groups.setdefault(key, []).append(node)
        return groups

    def _quantise_input(self, x: str) -> tuple[str, str]:
        """(uint8 tensor, per-row scale) for activation `x`, made once however many matmuls read it."""
        if x in self.quantised:
            return self.quantised[x]
        p = f"pt_q{len(self.quantised)}"
        self.nodes += [
            helper.make_node("Abs", [x], [p + "_abs"], name=p + "_abs"),
            helper.make_node("ReduceMax", [p + "_abs"], [p + "_amax0"], axes=[-1], keepdims=1, name=p + "_amax0"),
            helper.make_node("Max", [p + "_amax0", self.eps], [p + "_amax"], name=p + "_amax"),
            helper.make_node("Div", [self.c127, p + "_amax"], [p + "_inv"], name=p + "_inv"),
            helper.make_node("Mul", [x, p + "_inv"], [p + "_xs"], name=p + "_xs"),
            # round half to even, + zero point, saturate, cast: one pass instead of Round/Add/Cast
            helper.make_node("QuantizeLinear", [p + "_xs", self.one, self.zero_point], [p + "_xq"], name=p + "_xq"),
            helper.make_node("Mul", [p + "_amax", self.c_inv127], [p + "_scale"], name=p + "_scale"),
        ]
        self.quantised[x] = (p + "_xq", p + "_scale")
        return self.quantised[x]

    def _emit_group(self, x: str, group: list[NodeProto]) -> None:
        """One integer matmul for all weight matmuls reading `x`, then a Split back to their outputs."""
        xq, row_scale = self._quantise_input(x)
        weights = [self.floats[n.input[1]] for n in group]
        w = np.concatenate(weights, axis=1) if len(weights) > 1 else weights[0]
        col_scale = (np.maximum(np.abs(w).max(axis=0), 1e-30) / 127.0).astype(np.float32)
        wq = np.clip(np.round(w / col_scale), -127, 127).astype(np.int8)
        base = group[0].output[0]  # output names are unique (node names may be empty)
        wname = self.const(base + "_wq", wq)
        sname = self.const(base + "_ws", col_scale)
        joined = group[0].output[0] if len(group) == 1 else base + "_joined"
        # onnxruntime fuses MatMulInteger -> Cast -> Mul(row scale) into one MatMulIntegerToFloat; the
        # column-scale Mul stays apart, which also keeps the bias Add out of that kernel (it would add
        # the bias before the row scale: measured, cosine 0.95 to the engine)
        self.nodes += [
            helper.make_node("MatMulInteger", [xq, wname, self.zero_point], [base + "_i32"], name=base + "_int"),
            helper.make_node("Cast", [base + "_i32"], [base + "_f"], to=TensorProto.FLOAT, name=base + "_f"),
            helper.make_node("Mul", [base + "_f", row_scale], [base + "_rs"], name=base + "_rowscale"),
            helper.make_node("Mul", [base + "_rs", sname], [joined], name=base + "_colscale"),
        ]
        if len(group) > 1:
            sizes = self.const(base + "_sizes", np.array([m.shape[1] for m in weights], np.int64))
            self.nodes.append(helper.make_node("Split", [joined, sizes], [n.output[0] for n in group], axis=-1,
                                               name=base + "_split"))

    def _is_embedding(self, node: NodeProto) -> bool:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        return (node.op_type == "Gather" and axis == 0 and node.input[0] in self.floats
                and self.floats[node.input[0]].shape[0] >= _EMBED_MIN_ROWS)

    def _emit_embedding(self, node: NodeProto) -> None:
        """The vocabulary table as int8 rows x one float scale per row, dequantised after the lookup."""
        table = self.floats[node.input[0]]
        scale = (np.maximum(np.abs(table).max(axis=1, keepdims=True), 1e-30) / 127.0).astype(np.float32)
        q = np.clip(np.round(table / scale), -127, 127).astype(np.int8)
        p = node.output[0]
        tname = self.const(p + "_q", q)
        sname = self.const(p + "_s", scale)
        ids = node.input[1]
        self.nodes += [
            helper.make_node("Gather", [tname, ids], [p + "_rows"], name=p + "_rows"),
            helper.make_node("Gather", [sname, ids], [p + "_rowscale"], name=p + "_rowscale"),
            helper.make_node("Cast", [p + "_rows"], [p + "_rowsf"], to=TensorProto.FLOAT, name=p + "_rowsf"),
            helper.make_node("Mul", [p + "_rowsf", p + "_rowscale"], [node.output[0]], name=p + "_dequant"),
        ]

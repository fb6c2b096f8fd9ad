"""Export a sentence-transformers/BERT model directory to ONNX (fp32, and optionally int8).

`export_onnx(model_dir, int8)` writes `model_dir/onnx/model.onnx` (fp32) and, with `int8=True`,
`model_dir/onnx/model_int8.onnx` (onnxruntime dynamic quantisation, QInt8 per-channel weights).
The graph takes `input_ids` and `attention_mask` (int64, [batch, sequence]) and returns
`last_hidden_state` (float32, [batch, sequence, hidden]); pooling and normalisation are done by the serving code
(`index.onnx_encoder.OnnxEncoder`), so the file is a plain "feature-extraction" export. The
`onnx/` sub-directory is the layout sentence-transformers uses for its own ONNX backend.

Export uses torch's legacy TorchScript exporter (`dynamo=False`) through a small wrapper module that
passes the inputs as keyword arguments (positional arguments fail with transformers 5), with eager
attention so the graph is plain MatMul/Softmax. torch and transformers are imported lazily: this
module is cheap to import.
"""

from __future__ import annotations

import warnings
from pathlib import Path

ONNX_SUBDIR = "onnx"
FP32_NAME = "model.onnx"
INT8_NAME = "model_int8.onnx"
OPSET = 17


def onnx_paths(model_dir: Path) -> tuple[Path, Path]:
    """(fp32 path, int8 path) that `export_onnx` writes for `model_dir`."""
    base = Path(model_dir) / ONNX_SUBDIR
    return base / FP32_NAME, base / INT8_NAME


def export_onnx(model_dir: Path, int8: bool = False, *, opset: int = OPSET) -> list[Path]:
    """Write `onnx/model.onnx` (and `onnx/model_int8.onnx` when `int8`) under `model_dir`.

    Returns the written paths, fp32 first. `model_dir` is a transformers/sentence-transformers
    directory whose root holds `config.json` + weights (as `export_bundled` writes). The tokenizer
    files stay where they are; the ONNX encoder finds them in the parent of `onnx/`.
    """
    import torch
    from transformers import AutoModel

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: not a model directory")
    fp32_path, int8_path = onnx_paths(model_dir)
    fp32_path.parent.mkdir(parents=True, exist_ok=True)

    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager", **declared_model_kwargs(model_dir))
    model.eval()

    class _Wrapper(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    wrapper = _Wrapper(model).eval()
    dummy_ids = torch.tensor([[0, 41, 1294, 12, 6, 124084, 2], [0, 41, 1294, 12, 6, 2, 1]], dtype=torch.long)
    dummy_ids = dummy_ids % int(model.config.vocab_size)  # any vocabulary: e.g. gte-base-zh has 21,128 ids
    dummy_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]], dtype=torch.long)
    tmp = fp32_path.with_suffix(".onnx.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # tracer notes about transformers' mask helpers: the traced graph is checked against the
        # engine with padded, variable-length batches (tests/test_model_export.py)
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (dummy_ids, dummy_mask),
            str(tmp),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "last_hidden_state": {0: "batch", 1: "sequence"},
            },
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    tmp.replace(fp32_path)
    del wrapper, model
    written = [fp32_path]
    if int8:
        written.append(quantize_int8(fp32_path, int8_path))
    return written


def quantize_int8(src: Path, dst: Path) -> Path:
    """onnxruntime dynamic quantisation: QInt8 weights, per output channel; activations at run time.

    Per-channel scales matter here: with one scale per weight tensor the cosine to the bundled engine
    drops from ~0.997 to ~0.990 mean (measured on 300 sentences, docs/models.md). The feed-forward
    output projections of the lower half of the layers stay fp32: their input is the GELU output,
    whose long tail one int8 scale per text cannot hold, and the early layers' error carries through
    the rest. Those 6 of 72 weight matmuls lift the mean cosine to the engine from 0.9974 to 0.9989
    (all 12 give 0.9990 at 4x the cost) for ~0.4 ms per query (docs/models.md).
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst.with_suffix(".onnx.tmp")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # silence "consider pre-processing" (shape inference: no gain for this graph)
    try:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=_ffn_output_matmuls(src))
    finally:
        root.setLevel(level)
    tmp.replace(dst)
    return dst


def _ffn_output_matmuls(path: Path) -> list[str]:
    """Names of the lower half of the layers' feed-forward output matmuls (`encoder.layer.N.output.dense`)."""
    import re

    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    found = {}
    for node in graph.node:
        match = re.search(r"/layer\.(\d+)/output/dense/MatMul$", node.name)
        if node.op_type == "MatMul" and match:
            found[node.name] = int(match.group(1))
    layers = max(found.values(), default=-1) + 1
    return [name for name, layer in found.items() if layer < layers / 2]


def declared_model_kwargs(model_dir: Path) -> dict:
    """Extra model arguments a sentence-transformers dir declares (e.g. add_pooling_layer=False)."""
    import json

    cfg = model_dir / "sentence_bert_config.json"
    if not cfg.is_file():
        return {}
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except ValueError:
        return {}
    args = data.get("model_args") or data.get("model_kwargs") or {}
    return {k: v for k, v in args.items() if k == "add_pooling_layer"}

"""Export a sentence-transformers/BERT model directory to ONNX (fp32, and optionally int8).

`export_onnx(model_dir, int8)` writes `model_dir/onnx/model.onnx` (fp32) and, with `int8=True`,
`model_dir/onnx/model_int8.onnx` (per-token int8 activations x per-channel int8 weights, index.onnx_int8).
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
    """The int8 file: per-token int8 activations x per-channel int8 weights (`index.onnx_int8`).

    Not onnxruntime's `quantize_dynamic`: its one activation scale per batch made a text's vector
    depend on the texts batched with it, so the int8 file had to run text by text. Per-token scales
    keep every vector batch-independent (max |delta| 0) at a mean cosine of 0.9992 to the bundled
    engine, and batching then makes it the fastest backend (docs/models.md, docs/performance.md).
    """
    from index.onnx_int8 import quantize_per_token

    return quantize_per_token(src, dst)


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

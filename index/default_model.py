"""The `auto` encoder (the default): the bundled weights served as ONNX int8, exported once.

The same multilingual-e5-small weights answer ~5x faster through onnxruntime int8 than through the
bundled 4-bit engine on one CPU thread, with the same answers (docs/models.md); it is the per-token
rewrite (index.onnx_int8), batch-independent, so it is encoded in batches too. The int8 file is made
from the bundled file on the first start, into `<data_dir>/models/bundled/onnx/model_int8.onnx`
(no download; ~40 s and ~2.5 GB of RAM once, ~600 MB on disk), in a child process so the server never
carries torch. Every later start, and every other worker or CLI command on the same data dir, finds
the file and loads it in a second. Workers that start together wait on one file lock: one exports.

"Verified" is checked, not assumed: the export is byte-for-byte reproducible with the pinned
libraries, and the package ships a calibration for exactly those bytes. If the export cannot run
(no torch, no disk, a read-only data dir) or produces bytes nobody calibrated (a library upgrade),
`auto` logs why and serves the bundled engine instead: slower, never wrong.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from index.datadir import bundled_export_dir, export_lock
from index.filelock import FileLock

log = logging.getLogger("faqbot.encoder")

EXPORT_TIMEOUT_S = 900.0  # the export takes ~40 s on 2 cores


def int8_path(models_dir: Path) -> Path:
    """Where the auto-exported ONNX int8 model lives (its existence means the export finished)."""
    from index.onnx_export import onnx_paths

    return onnx_paths(bundled_export_dir(models_dir))[1]


def ensure_int8_export(models_dir: Path) -> Path:
    """The int8 model file, exporting it first if no process has yet (RuntimeError if that fails)."""
    target = int8_path(models_dir)
    if target.is_file():
        return target
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(export_lock(models_dir)).hold():  # other workers wait here and then find the file
        if target.is_file():
            return target
        log.warning("first start: exporting the bundled model to ONNX int8 in %s "
                    "(one time, under a minute and 3 GB of RAM, no download)", target.parent.parent)
        started = time.perf_counter()
        tail = _run_export_child(bundled_export_dir(models_dir))
        if not target.is_file():
            raise RuntimeError(f"the ONNX export failed: {tail or 'no message'}")
        log.warning("exported %s in %.0f s", target, time.perf_counter() - started)
        return target


def _run_export_child(model_dir: Path) -> str:
    """Run the export in a child process, its lines passed on to the log; the last lines if it fails."""
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    try:
        child = subprocess.Popen([sys.executable, "-m", "index.default_model", str(model_dir)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
    except OSError as exc:
        return f"cannot start the export: {exc}"
    watchdog = threading.Timer(EXPORT_TIMEOUT_S, child.kill)  # a wedged child must not hold a start forever
    watchdog.start()
    lines: deque[str] = deque(maxlen=3)
    try:
        for raw in child.stderr or ():
            # progress bars redraw with \r: keep the last state of the line
            text = next((part.strip() for part in reversed(raw.split("\r")) if part.strip()), "")[-300:]
            if text:
                lines.append(text)
                log.info("export: %s", text)
        code = child.wait()
    finally:
        watchdog.cancel()
    return "" if code == 0 else f"exit {code}: " + " | ".join(lines)


def ensure_standard_export(model_dir: Path, *, progress: bool = False) -> Path:
    """The bundled weights as a sentence-transformers directory, exported once (the ONNX and fine-tuning base).

    Written under a `.partial` name and renamed, so a complete directory is the only kind that exists.
    """
    from index.bundled_export import export_bundled

    model_dir = Path(model_dir)
    if not all((model_dir / name).is_file() for name in ("modules.json", "model.safetensors", "tokenizer.json")):
        print(f"exporting the bundled model to {model_dir} (once; ~470 MB, no download)", file=sys.stderr, flush=True)
        partial = model_dir.with_name(model_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        export_bundled(partial, progress=progress)
        shutil.rmtree(model_dir, ignore_errors=True)
        partial.rename(model_dir)
    return model_dir


def export_int8(model_dir: Path) -> Path:
    """Child-process body: the standard export (kept: the fine-tuning base), then ONNX int8.

    The fp32 ONNX file is an intermediate (470 MB) and is removed; `export_onnx` writes the int8 file
    under a temporary name and renames it, so its presence always means a complete export.
    """
    from index.onnx_export import export_onnx

    ensure_standard_export(model_dir)
    print("ONNX export and int8 quantisation", file=sys.stderr, flush=True)
    fp32, int8 = export_onnx(Path(model_dir), int8=True)
    fp32.unlink(missing_ok=True)
    return int8


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m index.default_model MODEL_DIR")
    print(f"wrote {export_int8(Path(sys.argv[1]))}", file=sys.stderr)

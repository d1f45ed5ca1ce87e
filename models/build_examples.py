#!/usr/bin/env python3
"""Build the example ONNX model of the Triton model repository, deterministically.

    python models/build_examples.py [--out models/triton]
    python models/build_examples.py --out REPO --version 2 --split-seed 1   # a retrained v2

Builds ``digits_onnx``: a StandardScaler + LogisticRegression classifier trained on
scikit-learn's bundled ``load_digits()`` 8x8 images (pixel values 0..16), exported with
skl2onnx and then edited with the ``onnx`` package so that its interface is

    input  ``image``          FP32 [batch, 8, 8]   (a Reshape to [batch, 64] is inside the graph)
    output ``probabilities``  FP32 [batch, 10]     (softmax class probabilities, class i = digit i)

and writes ``<out>/digits_onnx/{1/model.onnx,labels.txt,config.pbtxt}``.

Everything comes from data shipped inside scikit-learn (nothing is downloaded), the split and
the solver are fixed (no randomness beyond ``SPLIT_RANDOM_STATE``), so rebuilding gives the same
model. The held-out split is reproducible from the module-level constants below;
``held_out_digits()`` returns it for tests (load this file by path with importlib).

``--version 2 --split-seed 1`` trains the same pipeline on another split (another
"seed") and writes it as version 2 beside the first, with ``version_policy: { all { } }`` in
the config so Triton serves both: a second version that mostly, not always, agrees with the
first, as a retrained model does (``score replay``'s test compares the two).

The other example model, ``qa_lexical`` (a Triton python-backend model), is plain source code
committed under ``models/triton/qa_lexical`` and needs no build step.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

# --- Split / training parameters (tests import these; changing them changes the model) -------
TEST_SIZE = 0.25
SPLIT_RANDOM_STATE = 0
STRATIFY = True
LOGREG_C = 0.1
LOGREG_MAX_ITER = 5000
MIN_ACCURACY = 0.90

# --- ONNX export parameters ------------------------------------------------------------------
# Opset 15 / ai.onnx.ml 1 run on every onnxruntime Triton has shipped in years (ORT >= 1.10).
ONNX_OPSET = 15
ONNX_ML_OPSET = 1
MODEL_NAME = "digits_onnx"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
BATCH_DIM = "batch"
MAX_BATCH_SIZE = 16
LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

DEFAULT_OUT = Path(__file__).resolve().parent / "triton"

CONFIG_PBTXT = f"""\
name: "{MODEL_NAME}"
platform: "onnxruntime_onnx"
max_batch_size: {MAX_BATCH_SIZE}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ 8, 8 ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {len(LABELS)} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 500
}}
instance_group [
  {{
    kind: KIND_CPU
    count: 1
  }}
]
"""


def _split(seed: int = SPLIT_RANDOM_STATE):
    """Return (X_train, X_test, y_train, y_test, idx_train, idx_test) of the fixed split
    (``seed``: another split, for a retrained version)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32)  # [1797, 64], values 0..16
    y = digits.target.astype(np.int64)
    idx = np.arange(len(y))
    x_tr, x_te, y_tr, y_te, i_tr, i_te = train_test_split(
        x,
        y,
        idx,
        test_size=TEST_SIZE,
        random_state=seed,
        stratify=y if STRATIFY else None,
    )
    return x_tr, x_te, y_tr, y_te, i_tr, i_te


def held_out_indices() -> np.ndarray:
    """Indices into ``load_digits()`` of the held-out samples, in held-out order."""
    return _split()[5]


def held_out_digits(seed: int = SPLIT_RANDOM_STATE) -> tuple[np.ndarray, np.ndarray]:
    """The held-out set: (images float32 [N, 8, 8] with values 0..16, labels int64 [N])."""
    _, x_te, _, y_te, _, _ = _split(seed)
    return x_te.reshape(-1, 8, 8).astype(np.float32), y_te


def train(seed: int = SPLIT_RANDOM_STATE):
    """Fit the sklearn pipeline on the training part of the fixed split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_tr, _, y_tr, _, _, _ = _split(seed)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=LOGREG_C, max_iter=LOGREG_MAX_ITER))
    pipe.fit(x_tr, y_tr)
    return pipe


def to_triton_onnx(pipe):
    """Export ``pipe`` with skl2onnx and rewrite its interface to image[b,8,8] -> probabilities."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    flat_name = "image_flat"
    model = to_onnx(
        pipe,
        initial_types=[(flat_name, FloatTensorType([None, 64]))],
        target_opset={"": ONNX_OPSET, "ai.onnx.ml": ONNX_ML_OPSET},
        options={id(pipe.steps[-1][1]): {"zipmap": False}},
    )
    graph = model.graph
    produced = {o for n in graph.node for o in n.output}
    if OUTPUT_NAME not in produced:
        raise RuntimeError(f"skl2onnx graph has no {OUTPUT_NAME!r} tensor: {sorted(produced)}")

    # New input image[batch, 8, 8] -> Reshape -> image_flat[batch, 64] (the skl2onnx input).
    shape_name = "image_flat_shape"
    graph.initializer.append(numpy_helper.from_array(np.array([-1, 64], np.int64), shape_name))
    graph.node.insert(
        0, helper.make_node("Reshape", [INPUT_NAME, shape_name], [flat_name], name="flatten_image")
    )
    del graph.input[:]
    graph.input.append(
        helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, 8, 8])
    )

    # Exactly one output: probabilities[batch, 10]. The classifier node still computes its
    # label tensor internally; it is simply no longer a graph output.
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, len(LABELS)])
    )
    del graph.value_info[:]

    # skl2onnx lists the default domain twice; keep one entry per domain.
    opsets = {}
    for op in model.opset_import:
        opsets[op.domain] = max(op.version, opsets.get(op.domain, 0))
    del model.opset_import[:]
    for domain, version in sorted(opsets.items()):
        model.opset_import.append(helper.make_opsetid(domain, version))

    graph.name = MODEL_NAME
    model.doc_string = (
        "digits_onnx: StandardScaler+LogisticRegression on sklearn load_digits (8x8, 0..16). "
        "Built by models/build_examples.py."
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def run_onnx(model_path: Path, images: np.ndarray) -> np.ndarray:
    """Run the ONNX model with onnxruntime (CPU) and return probabilities [N, 10]."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    return sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, np.float32)})[0]


def build(
    out: Path = DEFAULT_OUT,
    verbose: bool = True,
    *,
    version: int = 1,
    split_seed: int = SPLIT_RANDOM_STATE,
) -> dict:
    """Build digits_onnx into ``out``; return a summary dict (paths, accuracy, sizes, sha256).

    ``version`` above 1 adds that version beside the others (trained on the split of
    ``split_seed``) and makes the config serve every version."""
    import onnx

    def say(msg: str) -> None:
        if verbose:
            print(msg)

    out = Path(out)
    model_dir = out / MODEL_NAME
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    onnx_path = model_dir / str(version) / "model.onnx"

    x_te, y_te = held_out_digits(split_seed)
    say(
        f"[digits_onnx] load_digits split: test_size={TEST_SIZE} "
        f"random_state={split_seed} stratify={STRATIFY} -> {len(y_te)} held-out samples"
    )
    pipe = train(split_seed)
    skl_acc = float(pipe.score(x_te.reshape(-1, 64), y_te))
    say(f"[digits_onnx] trained StandardScaler+LogisticRegression(C={LOGREG_C}, lbfgs)")
    say(f"[digits_onnx]   held-out accuracy (sklearn)     = {skl_acc:.4f}")

    model = to_triton_onnx(pipe)
    onnx.save_model(model, str(onnx_path))
    (model_dir / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    config = CONFIG_PBTXT
    if version > 1:  # serve every version, not only the latest (Triton's default policy)
        config = config.replace(
            f"max_batch_size: {MAX_BATCH_SIZE}\n",
            f"max_batch_size: {MAX_BATCH_SIZE}\nversion_policy: {{ all {{ }} }}\n",
        )
    (model_dir / "config.pbtxt").write_text(config, encoding="utf-8")

    # Verify with onnxruntime: full held-out set, batch 1 and a full batch of MAX_BATCH_SIZE.
    probs = run_onnx(onnx_path, x_te)
    if probs.shape != (len(y_te), len(LABELS)) or probs.dtype != np.float32:
        raise RuntimeError(f"unexpected output {probs.shape} {probs.dtype}")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
        raise RuntimeError("probabilities do not sum to 1")
    skl_probs = pipe.predict_proba(x_te.reshape(-1, 64))
    if not np.allclose(probs, skl_probs, atol=1e-4):
        raise RuntimeError("onnxruntime and sklearn probabilities disagree")
    acc = float((probs.argmax(axis=1) == y_te).mean())
    for bs in (1, MAX_BATCH_SIZE):
        p = run_onnx(onnx_path, x_te[:bs])
        if p.shape != (bs, len(LABELS)) or not np.allclose(p, probs[:bs], atol=1e-6):
            raise RuntimeError(f"batch size {bs}: bad output {p.shape}")
    say("[digits_onnx] onnxruntime: batch sizes 1 and 16 OK, matches sklearn predict_proba")
    say(f"[digits_onnx]   held-out accuracy (onnxruntime) = {acc:.4f}")
    if acc < MIN_ACCURACY:
        raise RuntimeError(f"held-out accuracy {acc:.4f} < {MIN_ACCURACY}")

    data = onnx_path.read_bytes()
    summary = {
        "model_dir": model_dir,
        "onnx_path": onnx_path,
        "accuracy": acc,
        "sklearn_accuracy": skl_acc,
        "n_held_out": int(len(y_te)),
        "onnx_bytes": len(data),
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
    }
    for name in (f"{version}/model.onnx", "labels.txt", "config.pbtxt"):
        path = model_dir / name
        say(f"[digits_onnx] wrote {path} ({path.stat().st_size} bytes)")
    say(f"[digits_onnx] model.onnx sha256 {summary['onnx_sha256']}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"model repository (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--version",
        type=int,
        default=1,
        help="the version to write (default 1; above 1: "
        "added beside the others, and the config serves every version)",
    )
    parser.add_argument(
        "--split-seed",
        type=int,
        default=SPLIT_RANDOM_STATE,
        help=f"the train/test split's random_state (default {SPLIT_RANDOM_STATE})",
    )
    args = parser.parse_args(argv)
    if args.version < 1:
        parser.error("--version must be 1 or more")
    build(args.out, version=args.version, split_seed=args.split_seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The local Triton launcher against the real tritonserver binary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import start_triton

from triton_score.local import LocalTriton, TritonStartError, find_tritonserver
from triton_score.local.onnx_wrapper import DEFAULT_MAX_BATCH_SIZE
from triton_score.local.processes import descendants, free_port, still_running

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

pytestmark = pytest.mark.integration  # each test starts tritonserver or score serve


def write_scale_onnx(path: Path) -> None:
    """A bare ONNX model: y = x * 2 for x FP32 [batch, 3], z = x + 1 (batching first dim)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 3])
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["y"]),
            helper.make_node("Add", ["x", "one"], ["z"]),
        ],
        "scale",
        [x],
        [y, z],
        initializer=[two, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def test_bare_onnx_model_is_served_with_autocompleted_config(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_scale_onnx(repo / "scale" / "1" / "model.onnx")
    before = sorted(p.name for p in repo.rglob("*"))
    triton = start_triton(repo)
    try:
        assert triton.wrapped_models == ["scale"]
        client = httpclient.InferenceServerClient(triton.url)
        meta = client.get_model_metadata("scale")
        assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
            ("x", "FP32", [-1, 3])
        ]
        assert sorted(o["name"] for o in meta["outputs"]) == ["y", "z"]
        config = client.get_model_config("scale")
        assert config["max_batch_size"] == DEFAULT_MAX_BATCH_SIZE
        assert "dynamic_batching" in config
        data = np.arange(6, dtype=np.float32).reshape(2, 3)
        inp = httpclient.InferInput("x", [2, 3], "FP32")
        inp.set_data_from_numpy(data, binary_data=True)
        result = client.infer("scale", [inp])
        np.testing.assert_allclose(result.as_numpy("y"), data * 2)
        np.testing.assert_allclose(result.as_numpy("z"), data + 1)
        client.close()
    finally:
        triton.stop()
    # The user's repository is untouched: no config.pbtxt, no model.py written into it.
    assert sorted(p.name for p in repo.rglob("*")) == before


def test_broken_model_fails_fast_with_the_log(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text(
        'name: "broken"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [{ name: "x" data_type: TYPE_FP32 dims: [1] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]\n'
    )
    (repo / "broken" / "1" / "model.py").write_text(
        "raise RuntimeError('this model is broken on purpose')\n"
    )
    triton = LocalTriton(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    with pytest.raises(TritonStartError) as info:
        triton.start(timeout=60)
    message = str(info.value)
    assert "exited with code" in message
    assert "broken on purpose" in message  # the model's own error, from Triton's log
    assert not triton.is_running()
    assert triton.shm_regions() == []


def test_missing_repository_is_a_clear_error(tmp_path: Path) -> None:
    triton = LocalTriton(tmp_path / "nope", http_port=free_port())
    with pytest.raises(TritonStartError, match="not found"):
        triton.start(timeout=10)


def test_stop_leaves_no_process_and_no_shm_region(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "echo" / "1").mkdir(parents=True)
    (repo / "echo" / "config.pbtxt").write_text(
        'name: "echo"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [{ name: "x" data_type: TYPE_FP32 dims: [1] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]\n'
    )
    (repo / "echo" / "1" / "model.py").write_text(
        "import triton_python_backend_utils as pb\n"
        "class TritonPythonModel:\n"
        "    def execute(self, requests):\n"
        "        return [pb.InferenceResponse([pb.Tensor('y', pb.get_input_tensor_by_name(r, 'x')"
        ".as_numpy())]) for r in requests]\n"
    )
    triton = start_triton(repo)
    pid = triton.pid
    assert pid is not None
    tree = descendants(pid)
    assert len(tree) >= 2, "the python backend should have started a stub process"
    assert triton.shm_regions(), "the python backend should have created its shm regions"
    triton.stop()
    assert still_running(tree) == [], "processes survived stop()"
    assert triton.shm_regions() == []
    triton.stop()  # idempotent


def test_found_binary_is_runnable() -> None:
    install = find_tritonserver()
    assert install.executable.is_file()
    assert install.has_backend("python")

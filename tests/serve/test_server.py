"""The default server (uvicorn, one process) on 127.0.0.1: tritonclient works unchanged, answers match
ONNX Runtime, bad requests get a 4xx sentence and hurt nobody, signals stop it cleanly."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serving_fixtures import SIZE, Server, free_port, get, reference

SHAPE = [1, 3, SIZE, SIZE]


def _client(server: Server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.host, network_timeout=60, connection_timeout=10)


def _infer(server: Server, x: np.ndarray, binary: bool = True) -> np.ndarray:
    client = _client(server)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = None if binary else [httpclient.InferRequestedOutput("logits", binary_data=False)]
    try:
        return client.infer(server.name, [tensor], outputs=outputs).as_numpy("logits")
    finally:
        client.close()


def _refusal(server: Server, x: np.ndarray, datatype: str = "FP32", name: str = "input", model: str | None = None) -> str:
    client = _client(server)
    tensor = httpclient.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=True)
    with pytest.raises(InferenceServerException) as info:
        client.infer(model or server.name, [tensor])
    client.close()
    assert info.value.status().startswith("4"), info.value
    return info.value.message()


def test_health_and_metadata(server):
    client = _client(server)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(server.name)
    meta = client.get_model_metadata(server.name)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}]
    assert meta["outputs"][0]["name"] == "logits" and meta["outputs"][0]["shape"] == [-1, 10]
    assert not client.is_model_ready("other")
    params = meta["parameters"]  # --preferred-batch auto: measured before the server was ready
    assert params["preferred_batch_source"] == "measured" and set(params["preferred_batch_throughput"]) == {"1", "2", "4", "8"}
    assert params["preferred_batch_size"][0] in (1, 2, 4, 8)
    client.close()
    _, metrics = get(f"{server.url}/metrics")
    assert f'dcd_serve_preferred_batch_size{{model="digits"}} {params["preferred_batch_size"][0]}.0'.encode() in metrics


def test_an_explicit_preferred_batch_caps_runs_and_answers_stay_right(served_onnx):
    srv = Server(served_onnx, "--max-batch", "8", "--preferred-batch", "2")
    try:
        xs = np.random.default_rng(5).standard_normal((16, 1, 3, SIZE, SIZE)).astype(np.float32)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            served = list(pool.map(lambda x: _infer(srv, x), xs))
        big = np.random.default_rng(6).standard_normal((5, 3, SIZE, SIZE)).astype(np.float32)
        expected = reference(served_onnx, np.concatenate([xs[:, 0], big]))
        tol = 1e-5 * np.abs(expected).max()
        for got, want in zip(served, expected):
            np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=tol)
        np.testing.assert_allclose(_infer(srv, big), expected[16:], rtol=1e-5, atol=tol)  # above 2: runs whole
        meta = json.loads(get(f"{srv.url}/v2/models/{srv.name}")[1])["parameters"]
        assert meta["preferred_batch_size"] == [2] and meta["preferred_batch_source"] == "given"
        _, metrics = get(f"{srv.url}/metrics")
        runs = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.decode().splitlines()
                if line.startswith("dcd_serve_batch_size_")}
        assert runs['dcd_serve_batch_size_bucket{le="2.0",model="digits"}'] == runs['dcd_serve_batch_size_count{model="digits"}'] - 1
    finally:
        code, out, _ = srv.stop()
    assert code == 0 and "preferred batch 2" in out, out


def test_concurrent_single_image_requests_match_onnx_runtime(server, served_onnx):
    xs = np.random.default_rng(3).standard_normal((24, 1, 3, SIZE, SIZE)).astype(np.float32)
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        served = list(pool.map(lambda x: _infer(server, x), xs))
    expected = reference(served_onnx, xs[:, 0])
    for got, want in zip(served, expected):
        np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    json_answer = _infer(server, xs[0], binary=False)  # JSON tensors both ways
    np.testing.assert_allclose(json_answer[0], expected[0], rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    _, metrics = get(f"{server.url}/metrics")
    assert b'dcd_serve_requests_total{code="200",model="digits"}' in metrics
    assert b"dcd_serve_batch_size_bucket" in metrics and b"dcd_serve_request_latency_seconds_bucket" in metrics


def test_bad_requests_get_a_sentence_and_the_server_keeps_answering(server, served_onnx):
    ok = np.zeros(SHAPE, np.float32)
    assert "shape [1, 3, 40, 48]" in _refusal(server, np.zeros((1, 3, 40, SIZE), np.float32))
    assert "the model takes FP32" in _refusal(server, ok.astype(np.float16), datatype="FP16")
    assert "unknown input 'image'" in _refusal(server, ok, name="image")
    assert "maximum batch 8" in _refusal(server, np.zeros((9, 3, SIZE, SIZE), np.float32))
    assert "NaN" in _refusal(server, np.full(SHAPE, np.nan, np.float32))
    assert "Unknown model 'other'" in _refusal(server, ok, model="other")
    status, body = get(f"{server.url}/v2/nothing")
    assert status == 404 and "Open Inference Protocol" in json.loads(body)["error"]
    x = np.random.default_rng(4).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_allclose(_infer(server, x), reference(served_onnx, x), rtol=1e-5, atol=1e-5)


def _raw(server: Server, payload: bytes, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(payload)
        if not read:
            return b""
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _post(server: Server, body: bytes, headers: dict[str, str], length: int | None = None) -> bytes:
    head = f"POST /v2/models/{server.name}/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += f"Content-Length: {len(body) if length is None else length}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


def test_truncated_bodies_and_vanishing_clients_disturb_nobody(server, served_onnx):
    tensor = httpclient.InferInput("input", SHAPE, "FP32")
    tensor.set_data_from_numpy(np.ones(SHAPE, np.float32), binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor])
    header = {"Inference-Header-Content-Length": str(json_size)}
    answer = _raw(server, _post(server, body[:-100], header))
    assert answer.startswith(b"HTTP/1.1 400") and b"truncated" in answer
    answer = _raw(server, _post(server, b'{"inputs": [{"name": "in', {}))
    assert answer.startswith(b"HTTP/1.1 400") and b"not valid JSON" in answer
    _raw(server, _post(server, body[:5000], header, length=len(body)), read=False)  # leaves mid-body
    _raw(server, _post(server, body, header), read=False)  # leaves before the answer
    x = np.random.default_rng(5).standard_normal((4, 1, 3, SIZE, SIZE)).astype(np.float32)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        served = list(pool.map(lambda v: _infer(server, v), x))
    np.testing.assert_allclose(np.concatenate(served), reference(served_onnx, x[:, 0]), rtol=1e-5, atol=1e-5)


def test_a_burst_beyond_the_queue_gets_503s_not_hangs(served_onnx):
    srv = Server(served_onnx, "--max-batch", "1", "--max-queue", "1", "--batch-wait-ms", "0")
    try:
        def attempt(i: int) -> tuple[int, str]:
            x = np.full(SHAPE, i / 10, np.float32)
            try:
                _infer(srv, x)
                return 200, ""
            except InferenceServerException as exc:
                return int(exc.status()), exc.message()

        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            outcomes = list(pool.map(attempt, range(48)))
        codes = {code for code, _ in outcomes}
        assert codes <= {200, 503}, outcomes
        assert 200 in codes
        assert all("at capacity" in msg for code, msg in outcomes if code == 503)
    finally:
        code, _, _ = srv.stop()
    assert code == 0


@pytest.mark.parametrize("sig, expected", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_signals_stop_the_server(served_onnx, sig, expected):
    srv = Server(served_onnx)
    code, out, seconds = srv.stop(sig)
    assert code == expected, out
    assert seconds < 15
    assert "Traceback" not in out
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()


def test_taken_port_bad_model_and_missing_provider_are_one_paragraph(served_onnx, tmp_path, run_cli, expect_user_error):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        expect_user_error(run_cli("serve", served_onnx, "--port", port), f"Port {port} on 127.0.0.1 is taken", "--port")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    expect_user_error(run_cli("serve", broken, "--port", free_port()), "not a readable ONNX model")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        expect_user_error(run_cli("serve", served_onnx, "--providers", "cuda", "--port", free_port()),
                          "'cuda'", "not available", code=3)
    expect_user_error(run_cli("serve", served_onnx, "--replicas", "2"), "--ray")


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_fp16_and_int8_files_serve(precision, tmp_path):
    from serving_fixtures import SAMPLE, export_sample

    options = {"fp16": True} if precision == "fp16" else {"int8": True,
                                                           "calibration": SAMPLE.parent / "digits_calibration.npz"}
    model = export_sample(tmp_path / f"{precision}.onnx", **options)
    srv = Server(model, "--max-batch", "4")
    try:
        xs = np.random.default_rng(9).standard_normal((8, 1, 3, SIZE, SIZE)).astype(np.float32)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            served = np.concatenate(list(pool.map(lambda x: _infer(srv, x), xs)))
        expected = reference(model, xs[:, 0])
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    finally:
        srv.stop()


@pytest.mark.gpu
def test_cuda_provider_serves(served_onnx):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu and a CUDA device")
    srv = Server(served_onnx, "--providers", "cuda")
    try:
        x = np.random.default_rng(10).standard_normal(SHAPE).astype(np.float32)
        expected = reference(served_onnx, x)
        np.testing.assert_allclose(_infer(srv, x), expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    finally:
        srv.stop()

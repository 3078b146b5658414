"""OIP v2 decoding and encoding, with tritonclient as the client on both sides."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.http import InferenceServerClient, InferResult

from dcd_deploy.serve.model import TensorSpec
from dcd_deploy.serve.protocol import ProtocolError, decode_infer_request, decompress, encode_infer_response

INPUTS = [TensorSpec("input", np.dtype(np.float32), (-1, 3, 4, 4))]
OUTPUTS = [TensorSpec("logits", np.dtype(np.float32), (-1, 10)), TensorSpec("features", np.dtype(np.float32), (-1, 2))]


def _request(x: np.ndarray, binary: bool = True, datatype: str = "FP32", name: str = "input", outputs=None):
    tensor = httpclient.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    body, json_size = InferenceServerClient.generate_request_body([tensor], outputs=outputs, request_id="r7")
    return body, None if json_size is None else str(json_size)


def _decode(body, header, max_batch=8):
    return decode_infer_request(body, header, INPUTS, OUTPUTS, max_batch)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_request_decodes_to_the_same_tensor(binary):
    x = np.random.default_rng(0).standard_normal((3, 3, 4, 4)).astype(np.float32)
    request = _decode(*_request(x, binary))
    np.testing.assert_array_equal(request.batch, x)
    assert request.id == "r7" and request.size == 3
    assert request.outputs == ["logits", "features"]
    assert request.binary == {"logits", "features"}  # no outputs named: tritonclient asks for all in binary


@pytest.mark.parametrize("binary", [True, False])
def test_response_decodes_in_tritonclient(binary):
    x = np.zeros((2, 3, 4, 4), np.float32)
    wanted = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
    request = _decode(*_request(x, True, outputs=wanted))
    assert request.outputs == ["logits"]
    logits = np.arange(20, dtype=np.float32).reshape(2, 10) / 7
    body, headers = encode_infer_response("m", request, {"logits": logits, "features": np.zeros((2, 2), np.float32)}, OUTPUTS)
    header = headers.get("Inference-Header-Content-Length")
    assert (header is not None) == binary
    result = InferResult.from_response_body(body, header_length=None if header is None else int(header))
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    assert result.as_numpy("features") is None
    assert result.get_response()["id"] == "r7" and result.get_response()["model_name"] == "m"


def test_plain_json_with_nested_data():
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 4, 4],
                                   "data": np.ones((1, 3, 4, 4)).tolist()}]}).encode()
    request = _decode(body, None)
    assert request.batch.shape == (1, 3, 4, 4) and request.batch.dtype == np.float32
    assert request.binary == set() and request.id is None


def test_gzip_body():
    body, header = _request(np.zeros((1, 3, 4, 4), np.float32))
    assert decompress(gzip.compress(body), "gzip") == body
    with pytest.raises(ProtocolError, match="not supported") as info:
        decompress(body, "br")
    assert info.value.status == 415


def _bad(x, **kw):
    body, header = _request(x, **kw)
    with pytest.raises(ProtocolError) as info:
        _decode(body, header)
    assert info.value.status == 400
    return info.value.message


def test_refusals_name_what_was_expected():
    ok = np.zeros((1, 3, 4, 4), np.float32)
    assert "shape [1, 3, 5, 4]" in _bad(np.zeros((1, 3, 5, 4), np.float32)) and "[-1, 3, 4, 4]" in _bad(np.zeros((1, 3, 5, 4), np.float32))
    assert "datatype 'FP64'; the model takes FP32" in _bad(ok.astype(np.float64), datatype="FP64")
    assert "unknown input 'image'" in _bad(ok, name="image")
    assert "batch 9, above this server's maximum batch 8" in _bad(np.zeros((9, 3, 4, 4), np.float32))
    nan = ok.copy()
    nan[0, 1, 2, 3] = np.nan
    assert "NaN or infinite" in _bad(nan)
    assert "NaN or infinite" in _bad(np.full((1, 3, 4, 4), np.inf, np.float32), binary=False)


def test_truncated_and_broken_bodies():
    body, header = _request(np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(ProtocolError, match="truncated"):
        _decode(body[:-10], header)
    with pytest.raises(ProtocolError, match="truncated"):
        _decode(body[: int(header) - 5], header)
    with pytest.raises(ProtocolError, match="not valid JSON"):
        _decode(b'{"inputs": [', None)
    with pytest.raises(ProtocolError, match="bytes after"):
        _decode(body + b"xx", header)
    with pytest.raises(ProtocolError, match='no "inputs"'):
        _decode(b'{"id": 1}', None)
    short = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 4, 4], "data": [1.0] * 5}]})
    with pytest.raises(ProtocolError, match="holds 5 values; shape"):
        _decode(short.encode(), None)


def test_unknown_output_is_refused():
    body, header = _request(np.zeros((1, 3, 4, 4), np.float32), outputs=[httpclient.InferRequestedOutput("probs")])
    with pytest.raises(ProtocolError, match="Unknown output 'probs'; the model's outputs are 'logits', 'features'"):
        _decode(body, header)

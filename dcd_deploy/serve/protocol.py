"""KServe's Open Inference Protocol (v2) over HTTP: decoding infer requests, encoding responses.

Only encoding and decoding live here (no model, no server), checked against the model's declared
tensors so that a bad request is refused with one sentence naming what was expected.

A request body is JSON, ``{"id"?, "parameters"?, "inputs": [{"name", "datatype", "shape", "data"}],
"outputs"?: [{"name", "parameters"?: {"binary_data": bool}}]}``, with ``data`` a flat (row-major) or
nested list. With the binary-tensor extension (what ``tritonclient`` sends), the header
``Inference-Header-Content-Length: N`` says the JSON is the body's first N bytes; an input carrying
``parameters.binary_data_size`` has no ``data`` and its raw little-endian bytes follow the JSON, in
the order of the inputs. A response is JSON in the same shape; outputs asked for in binary
(``outputs[i].parameters.binary_data`` or the request parameter ``binary_data_output``) are written
the same way, with ``Inference-Header-Content-Length`` set. Errors are ``{"error": "sentence"}``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import zlib
from collections.abc import Sequence

import numpy as np

from .model import TensorSpec

HEADER_LENGTH = "Inference-Header-Content-Length"


class ProtocolError(Exception):
    """A request the server refuses: HTTP ``status`` and one sentence naming what was expected."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclasses.dataclass
class InferRequest:
    """A decoded infer request: the input batch, which outputs to return and which of them in binary."""

    id: str | None
    batch: np.ndarray
    outputs: list[str]
    binary: set[str]

    @property
    def size(self) -> int:
        return int(self.batch.shape[0])


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def decompress(body: bytes, encoding: str | None) -> bytes:
    """The body without its ``Content-Encoding`` (gzip or deflate, as tritonclient may send it)."""
    encoding = (encoding or "identity").strip().lower()
    try:
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
    except (OSError, EOFError, zlib.error) as exc:
        raise ProtocolError(f"The request body is not valid {encoding} data ({exc}).") from None
    if encoding != "identity":
        raise ProtocolError(f"Content-Encoding {encoding!r} is not supported; send identity, gzip or deflate.", 415)
    return body


def _split(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    if header_length is None:
        head, rest = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} {header_length!r} is not a number of bytes.") from None
        if not 0 < n <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} is {n} but the body holds {len(body)} bytes; "
                                "the request is truncated or the header is wrong.")
        head, rest = body[:n], body[n:]
    try:
        request = json.loads(head)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"The request body is not valid JSON ({exc}); send an OIP v2 infer request.") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise ProtocolError('The request has no "inputs" list; send {"inputs": [{"name", "datatype", "shape", "data"}]}.')
    return request, rest


def _expected(spec: TensorSpec) -> str:
    return f"{spec.name!r} ({spec.datatype}, shape {list(spec.shape)}, -1: any)"


def _shape(tensor: dict, spec: TensorSpec, max_batch: int) -> tuple[int, ...]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ProtocolError(f"Input {spec.name!r} has no integer \"shape\" list; the model takes {_expected(spec)}.")
    fits = len(shape) == len(spec.shape) and all(e in (-1, d) for d, e in zip(shape, spec.shape))
    if not fits or min(shape, default=1) < 0:
        raise ProtocolError(f"Input {spec.name!r} has shape {shape}; the model takes {_expected(spec)}.")
    if shape[0] < 1:
        raise ProtocolError(f"Input {spec.name!r} has batch {shape[0]}; send at least one sample.")
    if shape[0] > max_batch:
        raise ProtocolError(f"Input {spec.name!r} has batch {shape[0]}, above this server's maximum batch {max_batch} "
                            "(--max-batch); split the request.")
    return tuple(shape)


def _data(tensor: dict, spec: TensorSpec, shape: tuple[int, ...], binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    """The tensor's values and the offset of the next binary input."""
    count = math.prod(shape)
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        needed = count * spec.dtype.itemsize
        if size != needed:
            raise ProtocolError(f"Input {spec.name!r} declares {size} bytes of binary data; shape {list(shape)} of "
                                f"{spec.datatype} needs {needed}.")
        if offset + size > len(binary):
            raise ProtocolError(f"Input {spec.name!r} declares {size} bytes of binary data but the body holds "
                                f"{len(binary) - offset} after the JSON header; the request is truncated.")
        array = np.frombuffer(binary, dtype=spec.dtype.newbyteorder("<"), count=count, offset=offset)
        return array.astype(spec.dtype, copy=False).reshape(shape), offset + size
    if "data" not in tensor:
        raise ProtocolError(f"Input {spec.name!r} has neither \"data\" nor parameters.binary_data_size.")
    try:
        array = np.asarray(tensor["data"], dtype=spec.dtype)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"Input {spec.name!r} has data that are not {spec.datatype} numbers ({exc}).") from None
    if array.size != count:
        raise ProtocolError(f"Input {spec.name!r} holds {array.size} values; shape {list(shape)} needs {count}.")
    return array.reshape(shape), offset


def _outputs(request: dict, outputs: Sequence[TensorSpec]) -> tuple[list[str], set[str]]:
    names = [o.name for o in outputs]
    everything_binary = bool((request.get("parameters") or {}).get("binary_data_output", False))
    asked = request.get("outputs")
    if asked is None:
        return names, set(names) if everything_binary else set()
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise ProtocolError('"outputs" must be a list of {"name": ...} objects.')
    chosen, binary = [], set()
    for out in asked:
        name = out.get("name")
        if name not in names:
            raise ProtocolError(f"Unknown output {name!r}; the model's outputs are {', '.join(map(repr, names))}.")
        chosen.append(name)
        if (out.get("parameters") or {}).get("binary_data", everything_binary):
            binary.add(name)
    return chosen, binary


def decode_infer_request(body: bytes, header_length: str | None, inputs: Sequence[TensorSpec],
                         outputs: Sequence[TensorSpec], max_batch: int) -> InferRequest:
    """Decode and check an infer request against the model's single input; raises :class:`ProtocolError`."""
    request, binary = _split(body, header_length)
    spec = inputs[0]
    given = request["inputs"]
    names = [t.get("name") if isinstance(t, dict) else None for t in given]
    unknown = [n for n in names if n != spec.name]
    if unknown or len(given) != 1:
        what = f"unknown input {unknown[0]!r}" if unknown else f"{len(given)} inputs"
        raise ProtocolError(f"The request has {what}; the model takes one input, {_expected(spec)}.")
    tensor = given[0]
    if tensor.get("datatype") != spec.datatype:
        raise ProtocolError(f"Input {spec.name!r} has datatype {tensor.get('datatype')!r}; the model takes {spec.datatype}.")
    shape = _shape(tensor, spec, max_batch)
    array, offset = _data(tensor, spec, shape, binary, 0)
    if offset != len(binary):
        raise ProtocolError(f"The body holds {len(binary) - offset} bytes after the declared binary inputs; "
                            f"check {HEADER_LENGTH} and binary_data_size.")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ProtocolError(f"Input {spec.name!r} contains NaN or infinite values; send finite numbers.")
    chosen, binary_outputs = _outputs(request, outputs)
    request_id = request.get("id")
    return InferRequest(str(request_id) if request_id is not None else None, array, chosen, binary_outputs)


def encode_infer_response(model_name: str, request: InferRequest, values: dict[str, np.ndarray],
                          specs: Sequence[TensorSpec]) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers (``Inference-Header-Content-Length`` when any output is binary)."""
    types = {s.name: s.datatype for s in specs}
    response: dict = {"model_name": model_name, "model_version": "1", "outputs": []}
    if request.id is not None:
        response["id"] = request.id
    blobs = []
    for name in request.outputs:
        value = values[name]
        entry: dict = {"name": name, "datatype": types[name], "shape": list(value.shape)}
        if name in request.binary:
            blob = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = value.ravel().tolist()
        response["outputs"].append(entry)
    head = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(blobs), {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}

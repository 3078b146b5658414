"""``serve --ray --address`` on a two-node local Ray cluster: two replicas on different nodes; one
node is removed while a load runs, and every request comes back: answered (requests routed to the
surviving replica) or, for those in flight on the lost replica, refused with Ray's HTTP 500."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serving_fixtures import SIZE, Server, reference

cluster_utils = pytest.importorskip("ray.cluster_utils")

REQUESTS = 160


def _metadata_nodes(server: Server, want: int = 2, timeout: float = 90.0) -> set[str]:
    """The Ray nodes whose replicas answered metadata requests, asked until ``want`` answered (the proxy
    learns of a replica a little after it runs)."""
    client = httpclient.InferenceServerClient(server.host, network_timeout=30)
    nodes: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(nodes) < want and time.monotonic() < deadline:
        nodes.add(client.get_model_metadata(server.name)["parameters"]["ray_node_id"])
        time.sleep(0.05)
    client.close()
    return nodes


def test_two_nodes_lose_one_under_load(served_onnx, monkeypatch):
    # Serve's proxy prefers the replica on its own node; spread the load over both (the cluster inherits this)
    monkeypatch.setenv("RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING", "0")
    # one CPU per node and one per replica: the two replicas can only run on different nodes
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    server = None
    try:
        cluster.wait_for_nodes()
        server = Server(served_onnx, "--ray", "--address", cluster.address, "--replicas", "2", "--max-batch", "4",
                        ready_timeout=180)
        assert len(_metadata_nodes(server)) == 2  # answered from both nodes

        x = np.random.default_rng(6).standard_normal((REQUESTS, 1, 3, SIZE, SIZE)).astype(np.float32)
        expected = reference(served_onnx, x[:, 0])
        outcomes: dict[int, object] = {}
        halfway = threading.Event()

        def send(i: int) -> None:
            client = httpclient.InferenceServerClient(server.host, network_timeout=60)
            tensor = httpclient.InferInput("input", [1, 3, SIZE, SIZE], "FP32")
            tensor.set_data_from_numpy(x[i], binary_data=True)
            try:
                outcomes[i] = client.infer(server.name, [tensor]).as_numpy("logits")[0]
            except Exception as exc:  # noqa: BLE001 - a refusal must carry a message, checked below
                outcomes[i] = exc
            finally:
                client.close()
            if len(outcomes) >= REQUESTS // 4:
                halfway.set()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(send, i) for i in range(REQUESTS)]
            assert halfway.wait(120)
            cluster.remove_node(worker)
            concurrent.futures.wait(futures, timeout=300)

        assert len(outcomes) == REQUESTS  # none lost: every request came back one way or the other
        answered = [i for i, o in outcomes.items() if isinstance(o, np.ndarray)]
        refused = {i: o for i, o in outcomes.items() if not isinstance(o, np.ndarray)}
        for i in answered:
            np.testing.assert_allclose(outcomes[i], expected[i], rtol=1e-5, atol=1e-5 * np.abs(expected).max())
        for exc in refused.values():  # in flight on the lost replica: Ray's proxy answers 500 or drops the connection
            assert _refusal_seen_by_client(exc), repr(exc)
        assert len(answered) > REQUESTS // 2, refused
        assert all(isinstance(outcomes[i], np.ndarray) for i in range(REQUESTS - 8, REQUESTS)), refused  # the survivor serves
        code, out, seconds = server.stop()
        server = None
        assert code == 0 and seconds < 15, out
    finally:
        if server is not None:
            server.stop()
        cluster.shutdown()


def _refusal_seen_by_client(exc: BaseException) -> bool:
    """A request in flight on a removed node comes back as an error the client sees, never as silence:
    a 5xx with a message from Ray's proxy, or (rarely, when the proxy's connection to the replica dies
    mid-answer) the connection closed under the client."""
    if isinstance(exc, InferenceServerException):
        return str(exc.status()).startswith("5") and bool(exc.message().strip())
    return isinstance(exc, OSError) or "closed" in type(exc).__name__.lower()


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process tree from /proc")
def test_local_ray_instance_stops_with_ctrl_c_and_leaves_nothing(served_onnx):
    server = Server(served_onnx, "--ray", "--preferred-batch", "2", ready_timeout=180)
    client = httpclient.InferenceServerClient(server.host, network_timeout=60)
    for n in (1, 4):  # 4 is above @serve.batch's maximum (the preferred batch): it runs whole, outside the batcher
        x = np.random.default_rng(8).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)
        tensor = httpclient.InferInput("input", [n, 3, SIZE, SIZE], "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        np.testing.assert_allclose(client.infer(server.name, [tensor]).as_numpy("logits"), reference(served_onnx, x),
                                   rtol=1e-5, atol=1e-5)
    assert client.get_model_metadata(server.name)["parameters"]["preferred_batch_size"] == [2]
    client.close()
    daemons = _descendants(server.proc.pid)
    assert daemons  # Ray's GCS, raylet and workers run below the command
    code, out, seconds = server.stop(signal.SIGINT)
    assert code == 130 and seconds < 15, out
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in daemons):
        time.sleep(0.2)
    assert not [p for p in daemons if _alive(p)]

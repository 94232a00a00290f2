"""Drives TaskService from Python with stubs generated from redline's protos.

Usage: taskservice_client.py HOST:PORT PROTO_DIR

Generates the stubs into a temporary directory (grpcio-tools bundles its own protoc), then submits a task,
reads its status, watches it to the end, and cancels a second, long task. Exits non-zero on any mismatch.
"""

import importlib
import os
import sys
import tempfile

from google.protobuf import struct_pb2
from grpc_tools import protoc
import grpc


def generate(proto_dir: str, out: str) -> None:
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    files = [
        "redline/tasks/v1/tasks.proto",
        "google/api/annotations.proto",
        "google/api/http.proto",
    ]
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    for pkg in ["redline", "redline/tasks", "redline/tasks/v1", "google/api"]:
        open(os.path.join(out, pkg, "__init__.py"), "a").close()
    # `google` is already a namespace package (google.protobuf); let it find our google.api too.
    import google

    google.__path__.append(os.path.join(out, "google"))


def main() -> None:
    addr, proto_dir = sys.argv[1], sys.argv[2]
    out = tempfile.mkdtemp(prefix="redline-py-")
    generate(proto_dir, out)
    sys.path.insert(0, out)
    pb = importlib.import_module("redline.tasks.v1.tasks_pb2")
    rpc = importlib.import_module("redline.tasks.v1.tasks_pb2_grpc")

    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = rpc.TaskServiceStub(channel)

    kwargs = struct_pb2.Struct()
    kwargs.update({"greeting": "hello from python", "n": 3})
    sub = stub.SubmitTask(pb.SubmitTaskRequest(task_name="redline.echo", kwargs=kwargs), timeout=5)
    assert sub.status == "submitted", sub

    task = stub.GetTask(pb.GetTaskRequest(task_id=sub.task_id), timeout=5).task
    assert task.task_name == "redline.echo" and task.status in ("PENDING", "STARTED", "SUCCESS"), task

    last = None
    for event in stub.WatchTask(pb.WatchTaskRequest(task_id=sub.task_id), timeout=10):
        last = event.task
    assert last is not None and last.status == "SUCCESS", last
    result = dict(last.result.struct_value)
    assert result["greeting"] == "hello from python" and result["n"] == 3, result

    seconds = struct_pb2.Struct()
    seconds.update({"seconds": 30})
    long = stub.SubmitTask(pb.SubmitTaskRequest(task_name="redline.sleep", kwargs=seconds), timeout=5)
    for event in stub.WatchTask(pb.WatchTaskRequest(task_id=long.task_id), timeout=10):
        if event.task.state == pb.TASK_STATE_RUNNING:
            break
    stub.CancelTask(pb.CancelTaskRequest(task_id=long.task_id), timeout=5)
    for event in stub.WatchTask(pb.WatchTaskRequest(task_id=long.task_id), timeout=10):
        last = event.task
    assert last.status == "REVOKED", last

    try:
        stub.GetTask(pb.GetTaskRequest(task_id="00000000-0000-0000-0000-000000000000"), timeout=5)
        raise AssertionError("unknown id did not fail")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e

    print("OK submit status watch cancel")


if __name__ == "__main__":
    main()

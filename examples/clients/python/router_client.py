#!/usr/bin/env python3
"""Call the Airlock hook router from Python with grpcio — a host application in a few lines.

The stubs are generated at start from proto/airlock/router/v1/router.proto with grpcio-tools, so
nothing generated is checked in. Needs: pip install grpcio grpcio-tools

The router serves authenticated callers only: every call carries the gRPC metadata
`authorization: Bearer <token>`, a token of the caller's ServiceAccount for the audience
airlock-router. In a pod, mount a projected serviceAccountToken with that audience and pass its
path with --token-file (the kubelet rotates the file; it is read at each start); by hand:

  export AIRLOCK_TOKEN=$(kubectl create token frontend -n team-a --audience airlock-router)

The ServiceAccount may call what PluginCallerBindings in the plugins' namespaces grant it.

  router_client.py --router 198.19.0.20:50050 list [--namespace team-a]
  router_client.py --router ... invoke team-a/hello transform '{"name": "python"}'
  router_client.py --router ... broadcast onEvent '{"type": "deploy"}' [--namespace team-a]
  router_client.py --router ... transform '{"name": " x "}' [--namespace team-a]
  router_client.py --router ... --token-file /var/run/secrets/airlock/token invoke ...

Broadcast and transform without --namespace cover the caller's own namespace. Prints the response
as JSON. Exit code 0 on success; on a gRPC error, prints CODE: message to stderr and exits 1.
"""
import argparse
import importlib
import json
import os
import pathlib
import sys
import tempfile

import grpc
from google.protobuf import json_format
from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[3] / "proto" / "proto"
PROTO = "airlock/router/v1/router.proto"


def load_stubs():
    """Generates router_pb2 and router_pb2_grpc into a temporary directory and imports them."""
    out = tempfile.mkdtemp(prefix="airlock-py-stubs-")
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    status = protoc.main(
        ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", PROTO]
    )
    if status != 0:
        sys.exit(f"generating stubs from {PROTO_ROOT / PROTO} failed")
    sys.path.insert(0, out)
    return (
        importlib.import_module("airlock.router.v1.router_pb2"),
        importlib.import_module("airlock.router.v1.router_pb2_grpc"),
    )


def auth_metadata(token):
    """The metadata that authenticates a call: the caller's ServiceAccount token as a bearer."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def read_token(token_file):
    """The token in token_file, else in the environment variable AIRLOCK_TOKEN, else None.
    Never printed, never a command-line argument (those show in process listings)."""
    if token_file:
        with open(token_file, encoding="ascii") as f:
            token = f.read().strip()
        if not token:
            sys.exit(f"the token file {token_file} is empty")
        return token
    return os.environ.get("AIRLOCK_TOKEN", "").strip() or None


def main():
    parser = argparse.ArgumentParser(description="Call the Airlock hook router.")
    parser.add_argument("--router", required=True, help="host:port of the router")
    parser.add_argument(
        "--token-file",
        help="file with the caller's ServiceAccount token for the audience airlock-router "
        "(default: the environment variable AIRLOCK_TOKEN)",
    )
    parser.add_argument(
        "--namespace",
        default="",
        help="only plugins in this namespace (broadcast, transform: default the caller's own)",
    )
    parser.add_argument("--deadline-ms", type=int, default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    p = sub.add_parser("invoke")
    p.add_argument("plugin", help="NAMESPACE/NAME")
    p.add_argument("hook")
    p.add_argument("payload")
    p = sub.add_parser("broadcast")
    p.add_argument("hook")
    p.add_argument("payload")
    p = sub.add_parser("transform")
    p.add_argument("payload")
    args = parser.parse_args()

    metadata = auth_metadata(read_token(args.token_file))
    pb, rpc = load_stubs()
    with grpc.insecure_channel(args.router) as channel:
        stub = rpc.HookRouterStub(channel)
        try:
            if args.command == "list":
                res = stub.ListPlugins(
                    pb.ListPluginsRequest(namespace=args.namespace), timeout=10, metadata=metadata
                )
            elif args.command == "invoke":
                namespace, _, name = args.plugin.partition("/")
                res = stub.Invoke(
                    pb.InvokeRequest(
                        plugin=pb.PluginRef(namespace=namespace, name=name),
                        hook=args.hook,
                        payload_json=args.payload,
                        deadline_ms=args.deadline_ms,
                        invocation_id="python-client",
                    ),
                    timeout=10,
                    metadata=metadata,
                )
            elif args.command == "broadcast":
                res = stub.Broadcast(
                    pb.BroadcastRequest(
                        hook=args.hook, payload_json=args.payload, namespace=args.namespace,
                        deadline_ms=args.deadline_ms,
                    ),
                    timeout=10,
                    metadata=metadata,
                )
            else:
                res = stub.Transform(
                    pb.TransformRequest(
                        payload_json=args.payload, namespace=args.namespace, deadline_ms=args.deadline_ms
                    ),
                    timeout=10,
                    metadata=metadata,
                )
        except grpc.RpcError as e:
            print(f"{e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    print(json.dumps(json_format.MessageToDict(res, preserving_proto_field_name=True), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

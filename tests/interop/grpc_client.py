#!/usr/bin/env python3
"""A gRPC client that is not tonic, for tests/grpc_interop.rs: grpcio (gRPC C-core) on kilnd's Unix socket.

It connects to unix://SOCKET as any standard client would, without overriding the :authority (C-core then
sends the socket path, percent-encoded). It knows nothing of kiln's API beforehand: it discovers the
services through server reflection, once with grpc.reflection.v1alpha (as grpcurl and older tools do: one
stream, list_services, then file_containing_symbol and file_by_filename for the imports) and once with
grpc.reflection.v1, builds the message classes of kiln.v1.System and grpc.health.v1.Health from the
descriptors it was sent, and calls System.Info and Health.Check with them. The reflection protocol's own
messages come from grpcio-reflection's v1alpha module; the v1 ones are built from the descriptor of
grpc.reflection.v1 that the server itself describes.

Prints one JSON object on stdout. When grpcio or protobuf cannot be imported it prints {"skip": reason} and
exits 0; any other failure is a traceback and a non-zero exit.
"""

import json
import queue
import sys

try:
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
except ImportError as e:  # the Rust test turns this into SKIPPED (a failure under KILN_TEST_STRICT=1)
    print(json.dumps({"skip": f"python3 cannot import {e.name}: pip install grpcio grpcio-reflection protobuf"}))
    sys.exit(0)

V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
V1 = "grpc.reflection.v1.ServerReflection"
TIMEOUT = 30


class Reflection:
    """One ServerReflectionInfo stream; ask() sends one request and waits for its answer."""

    def __init__(self, channel, service, request_class, response_class):
        self.request_class = request_class
        self.requests = queue.Queue()
        call = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        self.responses = call(iter(self.requests.get, None), timeout=TIMEOUT)

    def ask(self, **fields):
        self.requests.put(self.request_class(**fields))
        response = next(self.responses)
        if response.HasField("error_response"):
            raise RuntimeError(f"reflection error for {fields}: {response.error_response}")
        return response

    def services(self):
        return sorted(s.name for s in self.ask(list_services="").list_services_response.service)

    def files_for(self, symbol):
        """The serialized FileDescriptorProtos that define `symbol`, with everything they import."""
        files = {}
        pending = list(self.ask(file_containing_symbol=symbol).file_descriptor_response.file_descriptor_proto)
        while pending:
            proto = descriptor_pb2.FileDescriptorProto.FromString(pending.pop())
            if proto.name in files:
                continue
            files[proto.name] = proto
            for dep in proto.dependency:
                if dep not in files:
                    pending.extend(self.ask(file_by_filename=dep).file_descriptor_response.file_descriptor_proto)
        return files

    def close(self):
        self.requests.put(None)


def pool_of(files):
    """A descriptor pool holding `files`, added imports first."""
    pool = descriptor_pool.DescriptorPool()
    added = set()

    def add(name):
        if name in added:
            return
        added.add(name)
        for dep in files[name].dependency:
            add(dep)
        pool.Add(files[name])

    for name in files:
        add(name)
    return pool


def unary(channel, pool, service, method, request):
    """Calls service/method with classes built from `pool`; returns the reply as a dict (enum names, proto
    field names)."""
    m = pool.FindServiceByName(service).methods_by_name[method]
    request_class = message_factory.GetMessageClass(m.input_type)
    response_class = message_factory.GetMessageClass(m.output_type)
    call = channel.unary_unary(
        f"/{service}/{method}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    reply = call(json_format.ParseDict(request, request_class()), timeout=TIMEOUT)
    try:
        return json_format.MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    except TypeError:  # protobuf before 5.26
        return json_format.MessageToDict(reply, preserving_proto_field_name=True, including_default_value_fields=True)


def discover(reflection):
    """Services, and the pool describing kiln.v1.System and grpc.health.v1.Health, through `reflection`."""
    services = reflection.services()
    files = {}
    for symbol in ("kiln.v1.System", "grpc.health.v1.Health"):
        files.update(reflection.files_for(symbol))
    pool = pool_of(files)
    system = pool.FindServiceByName("kiln.v1.System")
    return {
        "services": services,
        "files": sorted(files),
        "system_methods": sorted(system.methods_by_name),
    }, pool


def calls(channel, pool):
    return {
        "info": unary(channel, pool, "kiln.v1.System", "Info", {}),
        "health": {
            name or "(server)": unary(channel, pool, "grpc.health.v1.Health", "Check", {"service": name})["status"]
            for name in ("", "kiln.v1.System", "kiln.v1.Images", "kiln.v1.Bundles")
        },
    }


def main():
    socket = sys.argv[1]
    out = {"grpcio": grpc.__version__}
    # No options: in particular no grpc.default_authority.
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        # v1alpha, grpcurl's way: one stream for all of it.
        alpha = Reflection(channel, V1ALPHA, v1alpha_pb2.ServerReflectionRequest, v1alpha_pb2.ServerReflectionResponse)
        out["v1alpha"], pool = discover(alpha)
        out["v1alpha"].update(calls(channel, pool))
        # The messages of reflection v1, as the server describes them.
        v1_files = alpha.files_for(V1)
        alpha.close()
        v1_pool = pool_of(v1_files)
        v1_request = message_factory.GetMessageClass(v1_pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest"))
        v1_response = message_factory.GetMessageClass(v1_pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse"))
        v1 = Reflection(channel, V1, v1_request, v1_response)
        out["v1"], pool = discover(v1)
        v1.close()
        out["v1"].update(calls(channel, pool))
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()

"""gRPC proxyless client for the control-plane e2e test.

Starts two gRPC servers on 127.0.0.1 (generic handler /outrider.test.Echo/Who answering with
the server's name), prints {"ports": [P1, P2]} and waits for a line on stdin (the test applies
the Service in between). Then, with GRPC_XDS_BOOTSTRAP pointing at the control plane, calls
xds:///TARGET N times, prints {"answers": {name: count}} and waits for another line before
closing the channel.
"""
import json
import sys
from concurrent import futures

import grpc


def server(name):
    def who(request, context):
        return name.encode()

    handler = grpc.method_handlers_generic_handler(
        "outrider.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    s.add_generic_rpc_handlers((handler,))
    port = s.add_insecure_port("127.0.0.1:0")
    s.start()
    return s, port


def main():
    target, calls = sys.argv[1], int(sys.argv[2])
    servers = [server("one"), server("two")]
    print(json.dumps({"ports": [p for _, p in servers]}), flush=True)
    sys.stdin.readline()
    answers = {}
    with grpc.insecure_channel(f"xds:///{target}") as channel:
        who = channel.unary_unary("/outrider.test.Echo/Who")
        for _ in range(calls):
            name = who(b"", timeout=10, wait_for_ready=True).decode()
            answers[name] = answers.get(name, 0) + 1
        print(json.dumps({"answers": answers}), flush=True)
        # Keep the channel (and its xDS stream) open until the test has read the status.
        sys.stdin.readline()
    for s, _ in servers:
        s.stop(0)


if __name__ == "__main__":
    main()

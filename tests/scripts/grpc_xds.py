"""gRPC proxyless client (grpcio) for the control-plane e2e tests; same protocol as grpc_xds.js.

Starts two gRPC servers on 127.0.0.1 (generic handler /outrider.test.Echo/Who answering with
the server's name, "one" and "two"), prints {"ports": [P1, P2]} and then reads commands, one a
line, calling xds:///TARGET with GRPC_XDS_BOOTSTRAP pointing at the control plane:

  spread N       call until both servers have answered, then N calls
  until NAME N   call until NAME answers (a config change took effect), then N calls
  done           close the channel and exit

Each command prints {"answers": {name: count}} of its N calls. A failed call prints the error
to stderr and exits 1. Each wait is bounded by OUTRIDER_TEST_DEADLINE_SECS (default 10).
"""
import json
import os
import sys
import time
from concurrent import futures

import grpc

DEADLINE = float(os.environ.get("OUTRIDER_TEST_DEADLINE_SECS") or 10)


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
    target = sys.argv[1]
    servers = [server("one"), server("two")]
    print(json.dumps({"ports": [p for _, p in servers]}), flush=True)
    # The channel (and its xDS watches) starts with the first command, once the test has
    # applied the policy.
    channel, who = None, None

    def call():
        try:
            return who(b"", timeout=DEADLINE, wait_for_ready=True).decode()
        except grpc.RpcError as e:
            print(f"call failed: {e.code()}: {e.details()}", file=sys.stderr, flush=True)
            sys.exit(1)

    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "done":
            break
        if channel is None:
            channel = grpc.insecure_channel(f"xds:///{target}")
            who = channel.unary_unary("/outrider.test.Echo/Who")
        wanted = {"spread": {"one", "two"}, "until": {words[1]}}[words[0]]
        end = time.monotonic() + DEADLINE
        seen = set()
        while not wanted <= seen:
            if time.monotonic() > end:
                print(f"only {sorted(seen)} answered, waiting for {sorted(wanted)}", file=sys.stderr, flush=True)
                sys.exit(1)
            seen.add(call())
        answers = {}
        for _ in range(int(words[-1])):
            name = call()
            answers[name] = answers.get(name, 0) + 1
        print(json.dumps({"answers": answers}), flush=True)
    if channel is not None:
        channel.close()
    for s, _ in servers:
        s.stop(0)


if __name__ == "__main__":
    main()

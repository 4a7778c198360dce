# Sourced by the benches' shell tools: `. "$(dirname "$0")/../lib/scratch.sh" NAME`.
# DIR: a scratch directory under /tmp, removed on exit together with the processes whose ids the
# tool appends to PIDS; free_port prints a free loopback port.
DIR=$(mktemp -d "/tmp/outrider-$1.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

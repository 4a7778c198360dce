//! The Kubernetes test bed on its own, for benchmarks and trying things by hand: starts etcd and
//! kube-apiserver on 127.0.0.1 (tests/src/kube.rs), prints `KUBECONFIG=PATH`, and stops them
//! (removing their directory) when its standard input closes or on Ctrl-C.
//!
//! ```sh
//! cargo run -p outrider-tests --bin kube-testbed   # prints KUBECONFIG=/tmp/outrider-kube-…/kubeconfig
//! ```
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let Some(api) = outrider_tests::kube::ApiServer::start().await else {
        return std::process::ExitCode::from(1);
    };
    println!("KUBECONFIG={}", api.kubeconfig().display());
    println!("API server {} ready; close standard input or press Ctrl-C to stop it", api.url);
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    });
    tokio::select! {
        _ = stdin_closed => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(api);
    std::process::ExitCode::SUCCESS
}

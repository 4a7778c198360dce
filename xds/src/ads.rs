//! The ADS client a proxy uses to get its configuration from an xDS server: Delta xDS by
//! default, state of the world (SotW) on request. It keeps what it has accepted, reconnects with
//! the one jittered exponential backoff and then tells the server what it already has (Delta:
//! `initial_resource_versions`; SotW: the last accepted `version_info`).
//!
//! Every response is handed to a [`Handler`] as the complete set of resources of its type after
//! the response is applied; the handler accepts (→ ACK) or rejects with a reason (→ NACK with
//! `error_detail`, and the previous resources of that type stay).
//!
//! When the proxy drains ([`AdsClient::with_drain`]) the client tells the server it is leaving:
//! one more request whose node metadata says `draining: true`, then it closes its side of the
//! stream. The server deregisters the workload at once and ends the stream, which the client
//! reports as [`Handler::left`]; it then reconnects as a draining node to keep its config
//! current until the process exits.

mod delta;
mod sotw;
mod stream;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::backoff::ExponentialBackoff;
use crate::resources::{
    CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, CLUSTER_TYPE_URL, LISTENER_TYPE_URL, ROUTE_CONFIGURATION_TYPE_URL, decode_any,
};

/// The four resource types, in the order an xDS server should send additions (CDS, EDS, LDS,
/// RDS: a reference always finds its target).
pub const TYPE_URLS: [&str; 4] =
    [CLUSTER_TYPE_URL, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, LISTENER_TYPE_URL, ROUTE_CONFIGURATION_TYPE_URL];

/// Default reconnect backoff: 100 ms doubling to 15 s, full jitter.
pub const DEFAULT_BACKOFF: ExponentialBackoff =
    ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(15));

/// Largest response the client decodes by default. Measured (`examples/snapshot_size.rs` of
/// the control plane, docs/operations.md): with 10,000 services, each with three endpoints and
/// a full TrafficPolicy, the largest response (CDS) is 7.8 MiB, so tonic's default of 4 MiB
/// breaks near 5,000 services; 64 MiB holds about 80,000. `--xds-max-message` changes it.
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 20;

/// gRPC status code `INVALID_ARGUMENT`, used for NACKs (as Envoy does).
const INVALID_ARGUMENT: i32 = 3;

/// Which ADS variant to speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// `DeltaAggregatedResources` (incremental).
    #[default]
    Delta,
    /// `StreamAggregatedResources` (state of the world).
    Sotw,
}

/// What the client connects to and how.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `http://host:port` of the xDS server.
    pub address: String,
    /// Sent on the first request of each stream.
    pub node: Node,
    pub protocol: Protocol,
    /// The types to subscribe to (all as wildcard subscriptions).
    pub type_urls: Vec<String>,
    pub backoff: ExponentialBackoff,
    pub connect_timeout: Duration,
    /// TLS for an `https://` address (the proxy's workload certificate as client certificate,
    /// and the control plane's identity checked against the mesh roots).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// A join token file, read at every connect and sent as stream metadata
    /// ([`crate::join_token::METADATA_KEY`]): the server then accepts this proxy's endpoint
    /// registration without a client certificate.
    pub join_token: Option<std::path::PathBuf>,
    /// Largest response decoded (bytes); a larger one ends the stream with an error that says
    /// so.
    pub max_message: usize,
    /// Register the workload at `<local address of the xDS connection>:<this port>` (node
    /// metadata `advertise`, set at each connect) when the node does not name an address
    /// itself: a sidecar whose inbound listener binds every address registers its pod IP.
    pub advertise_local_port: Option<u16>,
}

impl ClientConfig {
    /// Delta xDS for the four types, default backoff.
    pub fn new(address: impl Into<String>, node: Node) -> Self {
        Self {
            address: address.into(),
            node,
            protocol: Protocol::Delta,
            type_urls: TYPE_URLS.iter().map(|t| (*t).to_owned()).collect(),
            backoff: DEFAULT_BACKOFF,
            connect_timeout: Duration::from_secs(5),
            tls: None,
            join_token: None,
            max_message: DEFAULT_MAX_MESSAGE,
            advertise_local_port: None,
        }
    }
}

/// One resource as the client holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// Per-resource version (Delta); the type's `version_info` for SotW.
    pub version: String,
    pub any: Any,
}

/// All resources of one type, by name.
pub type TypeResources = BTreeMap<String, Resource>;

/// One response, applied: the complete set of resources of `type_url` it would leave in force.
#[derive(Debug)]
pub struct Update<'a> {
    pub type_url: &'a str,
    /// `version_info` (SotW) or `system_version_info` (Delta; may be empty).
    pub version: &'a str,
    pub resources: &'a TypeResources,
}

/// The consumer of updates: validates and applies them.
pub trait Handler: Send + Sync + 'static {
    /// `Ok` applies the update and ACKs it; `Err(detail)` NACKs it with `detail` as the
    /// readable `error_detail`, and the client keeps the previous resources of that type.
    fn update(&self, update: &Update<'_>) -> Result<(), String>;

    /// The stream went up (`true`) or down (`false`). For logs and metrics.
    fn connected(&self, _up: bool) {}

    /// The server has taken the notice that this proxy is draining (it ended the stream after
    /// the notice).
    fn left(&self) {}
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum AdsError {
    #[error("invalid xDS server address {address:?}: {source}")]
    Address { address: String, source: tonic::transport::Error },
    #[error(
        "the xDS address {address} is https but no TLS configuration was given (the proxy needs --identity-token or --ca-root)"
    )]
    NoTls { address: String },
    #[error("cannot connect to the xDS server at {address}: {source}; is it running?")]
    Connect { address: String, source: tonic::transport::Error },
    #[error("the xDS stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the xDS server closed the stream")]
    Closed,
    #[error("the request channel closed")]
    RequestChannel,
}

/// Name of a resource as the four types spell it (`name`, or `cluster_name` for endpoints).
pub fn resource_name(any: &Any) -> Result<String, crate::resources::AnyError> {
    Ok(match any.type_url.as_str() {
        LISTENER_TYPE_URL => decode_any::<Listener>(LISTENER_TYPE_URL, any)?.name,
        ROUTE_CONFIGURATION_TYPE_URL => decode_any::<RouteConfiguration>(ROUTE_CONFIGURATION_TYPE_URL, any)?.name,
        CLUSTER_TYPE_URL => decode_any::<Cluster>(CLUSTER_TYPE_URL, any)?.name,
        CLUSTER_LOAD_ASSIGNMENT_TYPE_URL => {
            decode_any::<ClusterLoadAssignment>(CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, any)?.cluster_name
        }
        other => {
            return Err(crate::resources::AnyError::WrongType {
                expected: "one of the four xDS resource types".into(),
                got: other.to_owned(),
            });
        }
    })
}

/// The last segment of a type URL: `Listener`, `Cluster`, ...
pub fn type_name(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// Node metadata `draining: true`: the proxy is leaving; a server that registered its workload
/// deregisters it.
pub fn mark_draining(node: &mut Node) {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let metadata = node.metadata.get_or_insert_with(Struct::default);
    metadata.fields.insert("draining".to_owned(), Value { kind: Some(Kind::BoolValue(true)) });
}

fn nack_status(detail: String) -> RpcStatus {
    RpcStatus { code: INVALID_ARGUMENT, message: detail, details: Vec::new() }
}

/// A gRPC channel to the xDS server of `config` (TLS for an `https://` address), recording the
/// local address of the connection in `local` when given. Other services of the control
/// connection (load reports) use it too.
pub async fn connect(config: &ClientConfig, local: Option<&crate::tls::LocalAddr>) -> Result<Channel, AdsError> {
    let address = config.address.clone();
    let endpoint = Endpoint::from_shared(address.clone())
        .map_err(|source| AdsError::Address { address: address.clone(), source })?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    match (&config.tls, address.starts_with("https://")) {
        (Some(tls), true) => {
            let connector = crate::tls::TlsConnector {
                config: tls.clone(),
                hint: "is the control plane serving TLS (--tls) with a certificate of the mesh CA?",
                local: local.cloned(),
            };
            endpoint.connect_with_connector(connector).await.map_err(|source| AdsError::Connect { address, source })
        }
        (None, true) => Err(AdsError::NoTls { address }),
        (_, false) => endpoint
            .connect_with_connector(crate::tls::TcpConnector { local: local.cloned().unwrap_or_default() })
            .await
            .map_err(|source| AdsError::Connect { address, source }),
    }
}

/// An ADS client: connect, subscribe, apply, ACK/NACK, reconnect.
#[derive(Debug)]
pub struct AdsClient {
    config: ClientConfig,
    /// Accepted resources per type URL (kept across reconnects).
    accepted: BTreeMap<String, Accepted>,
    /// Becomes true when the proxy starts draining.
    draining: Option<watch::Receiver<bool>>,
    /// A new node to tell the server about (a node proxy's workloads changed).
    node_updates: Option<watch::Receiver<Node>>,
}

/// What was accepted for one type.
#[derive(Clone, Debug, Default)]
struct Accepted {
    version: String,
    resources: TypeResources,
}

impl AdsClient {
    pub fn new(config: ClientConfig) -> Self {
        Self { config, accepted: BTreeMap::new(), draining: None, node_updates: None }
    }

    /// Tell the server when `draining` becomes true (see the module docs).
    pub fn with_drain(mut self, draining: watch::Receiver<bool>) -> Self {
        self.draining = Some(draining);
        self
    }

    /// Send the node again whenever `updates` changes (a request that changes nothing but the
    /// node), and use the latest one when reconnecting.
    pub fn with_node_updates(mut self, updates: watch::Receiver<Node>) -> Self {
        self.node_updates = Some(updates);
        self
    }

    /// Takes the latest node from the updates, keeping the draining mark and the address
    /// advertised from the xDS connection.
    fn refresh_node(&mut self) {
        if let Some(updates) = &mut self.node_updates {
            let advertised = self
                .config
                .advertise_local_port
                .and_then(|_| self.config.node.metadata.as_ref().and_then(|m| m.fields.get("advertise").cloned()));
            self.config.node = updates.borrow_and_update().clone();
            if let Some(advertised) = advertised {
                use envoy_types::pb::google::protobuf::Struct;
                let metadata = self.config.node.metadata.get_or_insert_with(Struct::default);
                metadata.fields.insert("advertise".to_owned(), advertised);
            }
            self.draining();
        }
    }

    /// Whether the proxy is draining; the first time it is, the node says so from then on.
    fn draining(&mut self) -> bool {
        let draining = self.draining.as_ref().is_some_and(|d| *d.borrow());
        if draining {
            mark_draining(&mut self.config.node);
        }
        draining
    }

    /// Connect and serve until the task is dropped: each time a stream ends it waits a jittered,
    /// growing delay (reset once a stream has delivered a response) and reconnects.
    pub async fn run(mut self, handler: Arc<dyn Handler>) {
        let mut attempts = self.config.backoff.iter();
        loop {
            let mut delivered = false;
            let result = self.run_once(handler.as_ref(), &mut delivered).await;
            handler.connected(false);
            if delivered {
                attempts.reset();
            }
            let delay = attempts.next_delay();
            match result {
                Ok(()) => {}
                Err(AdsError::Stream(status)) if status.code() == tonic::Code::OutOfRange => tracing::warn!(
                    error = %status,
                    limit = self.config.max_message,
                    retry_in = ?delay,
                    server = %self.config.address,
                    "xDS response larger than the decode limit; raise it (outrider-proxy --xds-max-message); keeping the last accepted config"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    retry_in = ?delay,
                    server = %self.config.address,
                    "xDS stream ended; keeping the last accepted config and reconnecting"
                ),
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One stream, until it ends. `delivered` is set once a response has been handled.
    pub async fn run_once(&mut self, handler: &dyn Handler, delivered: &mut bool) -> Result<(), AdsError> {
        self.refresh_node();
        let local = crate::tls::LocalAddr::default();
        let channel = self.connect(&local).await?;
        self.advertise_local(*local.lock());
        match self.config.protocol {
            Protocol::Delta => stream::run::<delta::Delta>(self, channel, handler, delivered).await,
            Protocol::Sotw => stream::run::<sotw::Sotw>(self, channel, handler, delivered).await,
        }
    }

    /// With [`ClientConfig::advertise_local_port`], the node advertises the local address of
    /// the connection just made (logged when it changes).
    fn advertise_local(&mut self, local: Option<std::net::SocketAddr>) {
        let (Some(port), Some(local)) = (self.config.advertise_local_port, local) else { return };
        use envoy_types::pb::google::protobuf::Struct;
        let addr = std::net::SocketAddr::new(local.ip(), port).to_string();
        let metadata = self.config.node.metadata.get_or_insert_with(Struct::default);
        let before = metadata.fields.insert("advertise".to_owned(), crate::resources::string_value(&addr));
        if before != Some(crate::resources::string_value(&addr)) {
            tracing::info!(
                advertise = %addr,
                server = %self.config.address,
                "registering this workload at the local address of the xDS connection (set --advertise to choose another)"
            );
        }
    }

    async fn connect(&self, local: &crate::tls::LocalAddr) -> Result<Channel, AdsError> {
        connect(&self.config, Some(local)).await
    }

    /// Accepted resources of a type (empty when none were received).
    pub fn accepted(&self, type_url: &str) -> Option<&TypeResources> {
        self.accepted.get(type_url).map(|a| &a.resources)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

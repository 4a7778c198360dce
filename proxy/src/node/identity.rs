//! Workload certificates in node mode. The node proxy asks the CA for each workload's
//! certificate with its own credential: the node certificate's chain and a signature over the
//! workload's CSR made with the node's key. The CA issues it only when the workload is
//! registered on this node (by this node's authenticated xDS stream). Each certificate is
//! renewed on its own schedule, the same way.
use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use crate::backoff::ExponentialBackoff;
use crate::mesh::{CaClient, Mesh, MeshHandle};
use crate::tls::{self, CertStore, Identity, TlsError, TrustBundle};

/// Issues a workload's certificates on the node's credential.
#[derive(Debug)]
pub struct NodeIssuer {
    client: CaClient,
    node: MeshHandle,
}

impl tls::rotate::CertIssuer for NodeIssuer {
    async fn issue(&self, csr_pem: String) -> Result<Vec<String>, TlsError> {
        use rustls::pki_types::CertificateSigningRequestDer;
        use rustls::pki_types::pem::PemObject as _;
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| TlsError::Issue(format!("our own CSR is not PEM: {e}")))?;
        let node = self.node.load_full().ok_or_else(|| TlsError::Issue("the node has no certificate".into()))?;
        let (chain, signature) = node
            .certs
            .renewal_proof(der.as_ref())
            .ok_or_else(|| TlsError::Issue("the node's certificate expired".into()))?;
        let issued = self
            .client
            .issue_for_node(&csr_pem, &chain, &signature)
            .await
            .map_err(|e| TlsError::Issue(e.to_string()))?;
        Ok(issued.chain)
    }
}

async fn bootstrap(shared: &Shared, identity: &Identity) -> Result<(Arc<CertStore>, NodeIssuer), TlsError> {
    let client = shared.ca.clone().ok_or_else(|| TlsError::Issue("node mode needs a CA (--identity-token)".into()))?;
    let (_, roots) = client.bundle().await.map_err(|e| TlsError::Issue(e.to_string()))?;
    let bundle = TrustBundle::from_pem(roots.iter().map(String::as_str))?;
    let certs = Arc::new(CertStore::new(identity.clone(), bundle));
    let issuer = NodeIssuer { client, node: shared.node_mesh.clone() };
    tls::rotate::renew(&certs, &issuer).await?;
    Ok((certs, issuer))
}

/// Get the workload's first certificate (retrying: the registration may not have reached the
/// control plane yet), install it, then renew it forever.
pub async fn run(shared: Arc<Shared>, identity: Identity, mesh: MeshHandle) {
    let backoff = ExponentialBackoff::new(Duration::from_millis(50), Duration::from_secs(5));
    let mut failures = 0u32;
    let (certs, issuer) = loop {
        match bootstrap(&shared, &identity).await {
            Ok(done) => break done,
            Err(error) => {
                if failures >= 3 {
                    tracing::warn!(%identity, %error, failures, "no workload certificate yet; retrying");
                }
                tokio::time::sleep(backoff.delay(failures)).await;
                failures = failures.saturating_add(1);
            }
        }
    };
    match Mesh::new(certs.clone()) {
        Ok(m) => mesh.store(Some(Arc::new(m))),
        Err(error) => {
            tracing::error!(%identity, %error, "cannot build the workload's TLS configs");
            return;
        }
    }
    tracing::info!(%identity, "workload certificate installed");
    let backoff = ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(30));
    tls::rotate::run(certs, issuer, backoff).await;
}

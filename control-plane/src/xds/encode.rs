//! Responses written from shared bytes. A response is its own fields (version, type, nonce,
//! removed names) encoded per stream, followed by its resources' entries (protobuf
//! concatenates repeated fields), each a few bytes of its own (the entry's head) and the
//! resource's `Any`, encoded once per snapshot. The response body hands the transport one chunk
//! at a time: small entries are copied into a chunk of at most [`CHUNK`] bytes, a large one's
//! head too, its `Any` is passed as it is (a reference, no copy), so a stream holds at most one
//! chunk of its own whatever the size of the response.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use prost::Message;
use tokio::sync::mpsc;

use crate::snapshot::XdsResource;

/// Most bytes copied into one chunk.
const CHUNK: usize = 16 << 10;
/// Encoded resources at least this long go to the transport as they are.
const DIRECT: usize = 4 << 10;

/// One response ready to send.
#[derive(Debug)]
pub(crate) struct Encoded {
    /// The response's fields other than its resources.
    head: Bytes,
    resources: Vec<Arc<XdsResource>>,
    /// Which entry of each resource to send.
    delta: bool,
}

impl Encoded {
    /// `response` (its `resources` empty) followed by `resources`.
    pub(super) fn sotw(response: &DiscoveryResponse, resources: Vec<Arc<XdsResource>>) -> Self {
        Self { head: response.encode_to_vec().into(), resources, delta: false }
    }

    /// `response` (its `resources` empty) followed by `resources`.
    pub(super) fn delta(response: &DeltaDiscoveryResponse, resources: Vec<Arc<XdsResource>>) -> Self {
        Self { head: response.encode_to_vec().into(), resources, delta: true }
    }

    /// A response of another service on the same server (load reports): `message` alone.
    pub(crate) fn message<M: Message>(message: &M) -> Self {
        Self { head: message.encode_to_vec().into(), resources: Vec::new(), delta: false }
    }

    pub(super) fn resources(&self) -> usize {
        self.resources.len()
    }

    /// The entry of `r`: its head, then the shared encoded resource.
    fn entry<'a>(&self, r: &'a XdsResource) -> (&'a [u8], &'a Bytes) {
        (if self.delta { r.delta_head() } else { r.sotw_head() }, r.encoded())
    }

    fn len(&self) -> usize {
        let entries = self.resources.iter().map(|r| self.entry(r)).map(|(head, body)| head.len() + body.len());
        self.head.len() + entries.sum::<usize>()
    }
}

/// A response being written: the gRPC message prefix and head first, then the entries.
#[derive(Debug)]
struct Sending {
    message: Encoded,
    next: usize,
    started: bool,
    /// A large resource whose entry's head went out in the last chunk: it goes next.
    direct: Option<Bytes>,
}

impl Sending {
    fn new(message: Encoded) -> Self {
        Self { message, next: 0, started: false, direct: None }
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(body) = self.direct.take() {
            return Some(body);
        }
        let resources = &self.message.resources;
        // The entries that go into this chunk: [self.next, end), the last one's resource left
        // for the next call when it is large.
        let mut end = self.next;
        let mut size = 0;
        let mut large = None;
        while let Some(r) = resources.get(end) {
            let (head, body) = self.message.entry(r);
            if body.len() >= DIRECT {
                size += head.len();
                large = Some(body.clone());
                end += 1;
                break;
            }
            if end > self.next && size + head.len() + body.len() > CHUNK {
                break;
            }
            size += head.len() + body.len();
            end += 1;
        }
        let prefix = if self.started { 0 } else { 5 + self.message.head.len() };
        if prefix == 0 && end == self.next {
            return None;
        }
        let mut chunk = BytesMut::with_capacity(prefix + size);
        if !self.started {
            self.started = true;
            // gRPC message prefix: not compressed, then the length (big-endian u32). Responses
            // are far below 4 GiB (clients refuse more than a few MiB).
            chunk.put_u8(0);
            chunk.put_u32(u32::try_from(self.message.len()).unwrap_or(u32::MAX));
            chunk.put_slice(&self.message.head);
        }
        for r in &resources[self.next..end] {
            let (head, body) = self.message.entry(r);
            chunk.put_slice(head);
            if body.len() < DIRECT {
                chunk.put_slice(body);
            }
        }
        self.next = end;
        self.direct = large;
        Some(chunk.freeze())
    }
}

/// The gRPC status an ADS stream ends with: OK unless the stream handler set another.
#[derive(Clone, Debug, Default)]
pub(crate) struct EndStatus(std::sync::Arc<parking_lot::Mutex<Option<(i32, String)>>>);

impl EndStatus {
    pub(crate) fn set(&self, status: &tonic::Status) {
        *self.0.lock() = Some((status.code() as i32, status.message().to_owned()));
    }

    fn trailers(&self) -> HeaderMap {
        let mut trailers = HeaderMap::new();
        match self.0.lock().take() {
            None => {
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
            }
            Some((code, message)) => {
                trailers.insert("grpc-status", HeaderValue::from(code));
                let printable = message.replace(|c: char| !c.is_ascii_graphic() && c != ' ', "_");
                if let Ok(v) = HeaderValue::from_str(&printable) {
                    trailers.insert("grpc-message", v);
                }
            }
        }
        trailers
    }
}

/// The response body of one ADS stream: its responses, then the end status (`grpc-status: 0`
/// unless the handler refused the stream) when the stream ends.
#[derive(Debug)]
pub(crate) struct AdsBody {
    rx: Option<mpsc::Receiver<Encoded>>,
    sending: Option<Sending>,
    status: EndStatus,
}

impl AdsBody {
    pub(crate) fn new(rx: mpsc::Receiver<Encoded>, status: EndStatus) -> Self {
        Self { rx: Some(rx), sending: None, status }
    }

    fn empty() -> Self {
        Self { rx: None, sending: None, status: EndStatus::default() }
    }
}

impl http_body::Body for AdsBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(sending) = &mut this.sending {
                if let Some(chunk) = sending.next_chunk() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                this.sending = None;
            }
            let Some(rx) = &mut this.rx else {
                return Poll::Ready(None);
            };
            match rx.poll_recv(cx) {
                Poll::Ready(Some(message)) => this.sending = Some(Sending::new(message)),
                Poll::Ready(None) => {
                    this.rx = None;
                    return Poll::Ready(Some(Ok(Frame::trailers(this.status.trailers()))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none() && self.sending.is_none()
    }
}

/// The response of a streaming call: headers now, the body as the stream goes.
pub(crate) fn response(body: AdsBody) -> http::Response<AdsBody> {
    let mut response = http::Response::new(body);
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// A trailers-only `UNIMPLEMENTED` answer for a method this server does not have.
pub(super) fn unimplemented(path: &str) -> http::Response<AdsBody> {
    refused(tonic::Code::Unimplemented, &format!("unknown method {path}"))
}

/// A trailers-only answer with `code` and `message`: the call is refused before it starts.
pub(crate) fn refused(code: tonic::Code, message: &str) -> http::Response<AdsBody> {
    let mut response = response(AdsBody::empty());
    let headers = response.headers_mut();
    headers.insert("grpc-status", HeaderValue::from(code as i32));
    if let Ok(message) = HeaderValue::from_str(&message.replace(|c: char| !c.is_ascii_graphic() && c != ' ', "_")) {
        headers.insert("grpc-message", message);
    }
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http_body_util::BodyExt;

    use envoy_types::pb::google::protobuf::Any;

    use super::*;
    use crate::snapshot::Generator;

    #[tokio::test]
    async fn a_response_written_from_shared_entries_decodes_as_the_message() {
        let mut policy = String::new();
        for i in 0..200 {
            policy.push_str(&format!(
                "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec: {{port: 80, endpoints: [{{address: \"127.0.0.1:{}\"}}]}}\n---\n",
                1000 + i
            ));
        }
        let set = outrider_xds::load_str("t.yaml", &policy).unwrap();
        let snapshot = Generator::new().generate(&set);
        let (tx, rx) = mpsc::channel(4);
        for type_url in
            [outrider_xds::resources::CLUSTER_TYPE_URL, outrider_xds::resources::ROUTE_CONFIGURATION_TYPE_URL]
        {
            let resources: Vec<_> = snapshot.get(type_url).unwrap().resources.values().cloned().collect();
            let head = DeltaDiscoveryResponse {
                type_url: type_url.into(),
                nonce: "7".into(),
                removed_resources: vec!["gone".into()],
                ..Default::default()
            };
            tx.send(Encoded::delta(&head, resources.clone())).await.unwrap();
            let head = DiscoveryResponse { type_url: type_url.into(), version_info: "v".into(), ..Default::default() };
            tx.send(Encoded::sotw(&head, resources)).await.unwrap();
        }
        drop(tx);
        let collected = AdsBody::new(rx, EndStatus::default()).collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        let mut bytes = collected.to_bytes();
        let mut frame = || {
            assert_eq!(bytes[0], 0, "not compressed");
            let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
            let message = bytes.slice(5..5 + len);
            bytes = bytes.slice(5 + len..);
            message
        };
        for type_url in
            [outrider_xds::resources::CLUSTER_TYPE_URL, outrider_xds::resources::ROUTE_CONFIGURATION_TYPE_URL]
        {
            let want = &snapshot.get(type_url).unwrap().resources;
            let delta = DeltaDiscoveryResponse::decode(frame()).unwrap();
            assert_eq!((delta.type_url.as_str(), delta.nonce.as_str()), (type_url, "7"));
            assert_eq!(delta.removed_resources, ["gone"]);
            assert_eq!(delta.resources.len(), want.len());
            for r in &delta.resources {
                assert_eq!(r.resource.as_ref(), Some(&want[&r.name].any().unwrap()), "{}", r.name);
                assert_eq!(r.version, want[&r.name].version);
            }
            let sotw = DiscoveryResponse::decode(frame()).unwrap();
            assert_eq!(sotw.version_info, "v");
            assert_eq!(sotw.resources, want.values().map(|r| r.any().unwrap()).collect::<Vec<_>>());
        }
        assert!(bytes.is_empty());
    }

    #[test]
    fn chunks_are_bounded_and_large_entries_are_not_copied() {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        use outrider_xds::resources::CLUSTER_TYPE_URL;
        let set = outrider_xds::load_str(
            "t.yaml",
            "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: a}\nspec: {port: 80}\n",
        )
        .unwrap();
        let snapshot = Generator::new().generate(&set);
        let r = snapshot.get(CLUSTER_TYPE_URL).unwrap().resources.values().next().unwrap();
        let large = Cluster { name: "b".repeat(DIRECT * 2), ..Default::default() };
        let big = Arc::new(crate::snapshot::XdsResource::new(
            "big".into(),
            "1".into(),
            crate::snapshot::encode_any(CLUSTER_TYPE_URL, &large),
            crate::snapshot::Scope::All,
        ));
        let mut resources = vec![r.clone(); 1000];
        resources.insert(500, big.clone());
        for delta in [false, true] {
            let message = if delta {
                Encoded::delta(&DeltaDiscoveryResponse::default(), resources.clone())
            } else {
                Encoded::sotw(&DiscoveryResponse::default(), resources.clone())
            };
            let mut sending = Sending::new(message);
            let mut all = BytesMut::new();
            let mut shared = false;
            while let Some(chunk) = sending.next_chunk() {
                assert!(chunk.len() <= CHUNK + 5 + DIRECT, "{}", chunk.len());
                shared |= chunk.as_ptr() == big.encoded().as_ptr();
                all.put_slice(&chunk);
            }
            assert!(shared, "the large resource went out as the shared bytes");
            assert_eq!(all.len(), 5 + sending.message.len());
            let body = all.freeze().slice(5..);
            let (names, anys): (Vec<String>, Vec<Any>) = if delta {
                let decoded = DeltaDiscoveryResponse::decode(body).unwrap();
                decoded.resources.into_iter().map(|r| (r.name, r.resource.unwrap())).unzip()
            } else {
                let decoded = DiscoveryResponse::decode(body).unwrap();
                decoded.resources.into_iter().map(|a| (String::new(), a)).unzip()
            };
            assert_eq!(anys.len(), 1001);
            assert_eq!(Cluster::decode(anys[500].value.as_slice()).unwrap(), large);
            assert_eq!(anys[0], r.any().unwrap());
            if delta {
                assert_eq!((names[0].as_str(), names[500].as_str()), (r.name.as_str(), "big"));
            }
        }
    }
}

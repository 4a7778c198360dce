//! Responses written from shared bytes. A response is its own fields (version, type, nonce,
//! removed names) encoded per stream, followed by its resources' entries, each encoded once per
//! snapshot (protobuf concatenates repeated fields). The response body hands the transport one
//! chunk at a time: small entries are copied into a chunk of at most [`CHUNK`] bytes, large ones
//! are passed as they are (a reference, no copy), so a stream holds at most one chunk of its
//! own whatever the size of the response.

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
/// Entries at least this long go to the transport as they are.
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

    fn entry<'a>(&self, r: &'a XdsResource) -> &'a Bytes {
        if self.delta { &r.delta } else { &r.sotw }
    }

    fn len(&self) -> usize {
        self.head.len() + self.resources.iter().map(|r| self.entry(r).len()).sum::<usize>()
    }
}

/// A response being written: the gRPC message prefix and head first, then the entries.
#[derive(Debug)]
struct Sending {
    message: Encoded,
    next: usize,
    started: bool,
}

impl Sending {
    fn next_chunk(&mut self) -> Option<Bytes> {
        let resources = &self.message.resources;
        // The entries that go into this chunk: [self.next, end).
        let mut end = self.next;
        let mut size = 0;
        if let Some(first) = resources.get(end)
            && self.started
            && self.message.entry(first).len() >= DIRECT
        {
            self.next += 1;
            return Some(self.message.entry(first).clone());
        }
        while let Some(r) = resources.get(end) {
            let len = self.message.entry(r).len();
            if len >= DIRECT || size + len > CHUNK {
                break;
            }
            size += len;
            end += 1;
        }
        let head = if self.started { 0 } else { 5 + self.message.head.len() };
        if head == 0 && end == self.next {
            return None;
        }
        let mut chunk = BytesMut::with_capacity(head + size);
        if !self.started {
            self.started = true;
            // gRPC message prefix: not compressed, then the length (big-endian u32). Responses
            // are far below 4 GiB (clients refuse more than a few MiB).
            chunk.put_u8(0);
            chunk.put_u32(u32::try_from(self.message.len()).unwrap_or(u32::MAX));
            chunk.put_slice(&self.message.head);
        }
        for r in &resources[self.next..end] {
            chunk.put_slice(self.message.entry(r));
        }
        self.next = end;
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
                Poll::Ready(Some(message)) => this.sending = Some(Sending { message, next: 0, started: false }),
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
                assert_eq!(r.resource.as_ref(), Some(&want[&r.name].any), "{}", r.name);
            }
            let sotw = DiscoveryResponse::decode(frame()).unwrap();
            assert_eq!(sotw.version_info, "v");
            assert_eq!(sotw.resources, want.values().map(|r| r.any.clone()).collect::<Vec<_>>());
        }
        assert!(bytes.is_empty());
    }

    #[test]
    fn chunks_are_bounded_and_large_entries_are_not_copied() {
        let set = outrider_xds::load_str(
            "t.yaml",
            "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: a}\nspec: {port: 80}\n",
        )
        .unwrap();
        let snapshot = Generator::new().generate(&set);
        let r = snapshot.get(outrider_xds::resources::CLUSTER_TYPE_URL).unwrap().resources.values().next().unwrap();
        let big = Arc::new(XdsResource {
            name: "big".into(),
            version: "1".into(),
            any: Default::default(),
            scope: crate::snapshot::Scope::All,
            sotw: Bytes::from(vec![1u8; DIRECT * 2]),
            delta: Bytes::new(),
        });
        let mut resources = vec![r.clone(); 1000];
        resources.insert(500, big.clone());
        let mut sending =
            Sending { message: Encoded::sotw(&DiscoveryResponse::default(), resources), next: 0, started: false };
        let mut total = 0;
        let mut shared = false;
        while let Some(chunk) = sending.next_chunk() {
            assert!(chunk.len() <= CHUNK + 5 + DIRECT * 2, "{}", chunk.len());
            shared |= chunk.as_ptr() == big.sotw.as_ptr();
            total += chunk.len();
        }
        assert!(shared, "the large entry went out as the shared bytes");
        assert_eq!(total, 5 + sending.message.len());
    }
}

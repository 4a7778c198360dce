//! Protocol detection sees the first bytes of every accepted connection: the HTTP/opaque
//! classifier, and the TLS ClientHello parser that tells a peer proxy (Outrider ALPN) apart.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = outrider_proxy::transport::detect::classify(data);
    let _ = outrider_proxy::transport::detect::client_hello_alpn(data);
});

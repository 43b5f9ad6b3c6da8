//! Large documents the apiserver keeps for its whole life (the OpenAPI v3 and v2 documents,
//! ~4 MiB of JSON) are held gzip-compressed, about a tenth of the memory. Clients that accept
//! gzip (kubectl and every client-go: Go's transport asks for it and decompresses) get the
//! compressed bytes as they are, with `Content-Encoding: gzip`, as kube-apiserver compresses
//! large responses; others get them decompressed per request.
use std::io::{Read, Write};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

/// A document kept compressed (or, should compression ever fail, as it is).
#[derive(Clone, Debug)]
pub enum Packed {
    /// Gzip-compressed bytes.
    Gzip(Bytes),
    /// The document itself.
    Plain(Bytes),
}

impl Packed {
    /// Compresses `plain`.
    pub fn new(plain: &[u8]) -> Packed {
        let mut enc = GzEncoder::new(Vec::with_capacity(plain.len() / 8), Compression::default());
        match enc.write_all(plain).and_then(|()| enc.finish()) {
            Ok(gz) => Packed::Gzip(Bytes::from(gz)),
            Err(e) => {
                tracing::warn!(error = %e, "keeping a document uncompressed");
                Packed::Plain(Bytes::copy_from_slice(plain))
            }
        }
    }

    /// The document itself.
    pub fn plain(&self) -> std::io::Result<Bytes> {
        match self {
            Packed::Plain(b) => Ok(b.clone()),
            Packed::Gzip(gz) => {
                let mut out = Vec::with_capacity(gz.len() * 8);
                GzDecoder::new(&gz[..]).read_to_end(&mut out)?;
                Ok(Bytes::from(out))
            }
        }
    }

    /// A 200 response of `content_type`: compressed when the request's `Accept-Encoding`
    /// allows gzip, otherwise decompressed.
    pub fn response(&self, request: &HeaderMap, content_type: &'static str) -> Response {
        let (body, gzip) = match self {
            Packed::Gzip(gz) if accepts_gzip(request) => (gz.clone(), true),
            Packed::Gzip(_) => match self.plain() {
                Ok(b) => (b, false),
                Err(e) => {
                    tracing::error!(error = %e, "cannot decompress a kept document");
                    return crate::error::ApiError::internal(format!(
                        "cannot decompress the document: {e}"
                    ))
                    .into_response();
                }
            },
            Packed::Plain(b) => (b.clone(), false),
        };
        let mut r = Response::new(Body::from(body));
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        if gzip {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        r
    }
}

/// Whether `Accept-Encoding` lists `gzip` (or `*`) without `q=0`.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_document_comes_back_whole_and_smaller() {
        let doc = serde_json::to_vec(&serde_json::json!({
            "paths": (0..500).map(|i| format!("/apis/group{i}/v1")).collect::<Vec<_>>()
        }))
        .unwrap_or_default();
        let p = Packed::new(&doc);
        let Packed::Gzip(gz) = &p else {
            panic!("not compressed")
        };
        assert!(gz.len() * 4 < doc.len(), "{} of {}", gz.len(), doc.len());
        assert_eq!(p.plain().ok().as_deref(), Some(&doc[..]));
    }

    #[test]
    fn gzip_is_sent_only_to_clients_that_accept_it() {
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(header::ACCEPT_ENCODING, v);
            }
            h
        };
        assert!(accepts_gzip(&headers("gzip")));
        assert!(accepts_gzip(&headers("deflate, GZIP;q=0.5")));
        assert!(accepts_gzip(&headers("*")));
        assert!(!accepts_gzip(&headers("gzip;q=0")));
        assert!(!accepts_gzip(&headers("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
        let p = Packed::new(b"{\"a\":1}\n");
        let r = p.response(&headers("gzip"), "application/json");
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        let r = p.response(&HeaderMap::new(), "application/json");
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
    }
}

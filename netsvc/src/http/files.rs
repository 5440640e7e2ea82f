//! Static boot files with single-range requests (RFC 9110 section 14) and exact lengths.

use std::io::SeekFrom;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use camino::Utf8Path;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::server::HttpError;

/// What to send of a file of known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeReply {
    /// The whole file (no `Range`, or one this server ignores).
    Full,
    /// Bytes `start..=end` (206).
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// No byte of the range exists (416).
    Unsatisfiable,
}

/// Decides the reply to a `Range` header value for a file of `len` bytes.
///
/// Only one `bytes` range is honoured; several ranges, other units and malformed values get the
/// whole file, which RFC 9110 allows.
pub fn parse_range(value: Option<&str>, len: u64) -> RangeReply {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeReply::Full;
    };
    if spec.contains(',') {
        return RangeReply::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeReply::Full;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first, last) {
        ("", suffix) => match num(suffix) {
            None => RangeReply::Full,
            Some(0) => RangeReply::Unsatisfiable,
            Some(_) if len == 0 => RangeReply::Unsatisfiable,
            Some(n) => RangeReply::Partial {
                start: len - n.min(len),
                end: len - 1,
            },
        },
        (start, end) => {
            let Some(start) = num(start) else {
                return RangeReply::Full;
            };
            let end = if end.is_empty() {
                u64::MAX
            } else {
                match num(end) {
                    Some(e) if e >= start => e,
                    _ => return RangeReply::Full,
                }
            };
            if start >= len {
                RangeReply::Unsatisfiable
            } else {
                RangeReply::Partial {
                    start,
                    end: end.min(len - 1),
                }
            }
        }
    }
}

/// Serves the regular file at `path` (already confined to its root), honouring `Range` and HEAD.
pub(crate) async fn serve_file(
    path: &Utf8Path,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, HttpError> {
    let io_err = |err| HttpError::Io {
        path: path.to_owned(),
        err,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(io_err)?;
    let meta = file.metadata().await.map_err(io_err)?;
    if !meta.is_file() {
        return Err(HttpError::NotFound {
            what: path.file_name().unwrap_or_default().to_owned(),
        });
    }
    let len = meta.len();
    // An If-Range whose validator this server cannot check gets the whole file.
    let range = if headers.contains_key(header::IF_RANGE) {
        None
    } else {
        headers.get(header::RANGE).and_then(|v| v.to_str().ok())
    };
    let (status, start, count) = match parse_range(range, len) {
        RangeReply::Full => (StatusCode::OK, 0, len),
        RangeReply::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        RangeReply::Unsatisfiable => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            insert(&mut r, header::CONTENT_RANGE, format!("bytes */{len}"));
            insert(&mut r, header::ACCEPT_RANGES, "bytes".to_owned());
            return Ok(r);
        }
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        file.seek(SeekFrom::Start(start)).await.map_err(io_err)?;
        Body::from_stream(ReaderStream::with_capacity(file.take(count), 64 * 1024))
    };
    let mut r = (status, body).into_response();
    insert(&mut r, header::CONTENT_LENGTH, count.to_string());
    insert(&mut r, header::ACCEPT_RANGES, "bytes".to_owned());
    insert(
        &mut r,
        header::CONTENT_TYPE,
        "application/octet-stream".to_owned(),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        let end = start + count - 1;
        insert(
            &mut r,
            header::CONTENT_RANGE,
            format!("bytes {start}-{end}/{len}"),
        );
    }
    Ok(r)
}

fn insert(r: &mut Response, name: header::HeaderName, value: String) {
    let value = HeaderValue::from_str(&value).expect("invariant: header values built from numbers");
    r.headers_mut().insert(name, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeReply::{Full, Partial, Unsatisfiable};

    #[test]
    fn ranges() {
        let cases = [
            (None, Full),
            (Some("bytes=0-99"), Partial { start: 0, end: 99 }),
            (
                Some("bytes=100-"),
                Partial {
                    start: 100,
                    end: 999,
                },
            ),
            (
                Some("bytes=990-5000"),
                Partial {
                    start: 990,
                    end: 999,
                },
            ),
            (
                Some("bytes=-10"),
                Partial {
                    start: 990,
                    end: 999,
                },
            ),
            (Some("bytes=-5000"), Partial { start: 0, end: 999 }),
            (
                Some("bytes=999-999"),
                Partial {
                    start: 999,
                    end: 999,
                },
            ),
            (Some("bytes=1000-"), Unsatisfiable),
            (Some("bytes=-0"), Unsatisfiable),
            (Some("bytes=5-1"), Full),
            (Some("bytes=0-1,5-6"), Full),
            (Some("items=0-1"), Full),
            (Some("bytes=a-b"), Full),
            (Some("bytes=-"), Full),
            (Some("bytes=+1-2"), Full),
        ];
        for (h, want) in cases {
            assert_eq!(parse_range(h, 1000), want, "{h:?}");
        }
        assert_eq!(parse_range(Some("bytes=-1"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
    }
}

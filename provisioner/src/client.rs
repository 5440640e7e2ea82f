//! An HTTP client of the REST API, over the same [`crate::api`] types the daemon serves. The CLI
//! uses the operator methods; the imager and the enrolling host use the machine methods.

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{
    API_PREFIX, DeployRequest, EnrolRequest, EnrolResponse, ErrorBody, Event, EventsQuery,
    HardwareInventory, HostDetail, HostSummary, ImageInfo, ImagingResult, ImportImageRequest,
    MachinePlan, NewRule, ProgressReport, RedeployRequest, Rule, RuleId,
};
use crate::secret::Secret;

/// Errors of API calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or the connection broke.
    #[error("request {method} {url} failed")]
    Transport {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// Cause.
        #[source]
        err: reqwest::Error,
    },
    /// The server answered with an error.
    #[error("{method} {url} returned {status}: {message}")]
    Api {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// HTTP status.
        status: StatusCode,
        /// The server's message.
        message: String,
        /// The server's request id, for 5xx.
        request_id: Option<String>,
    },
    /// A ranged artifact request was answered with something other than the asked range.
    #[error("GET {url} from offset {offset} answered {status} without the requested range")]
    RangeIgnored {
        /// URL.
        url: String,
        /// The first byte asked for.
        offset: u64,
        /// HTTP status of the answer.
        status: StatusCode,
    },
    /// The response body is not what the API promises.
    #[error("invalid response body from {method} {url}")]
    Decode {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// Cause.
        #[source]
        err: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status, for errors the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::RangeIgnored { status, .. } => Some(*status),
            ClientError::Transport { .. } | ClientError::Decode { .. } => None,
        }
    }

    /// Whether the server could not be reached at all.
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Transport { err, .. } if err.is_connect())
    }
}

/// An artifact download in progress: the body of `GET /images/{name}/{file}`, read chunk by
/// chunk so that multi-GB images never sit in memory.
#[derive(Debug)]
pub struct Download {
    url: String,
    resp: reqwest::Response,
}

impl Download {
    /// The URL being downloaded.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Bytes the server promised for this response (from the first requested byte on), if it
    /// said.
    pub fn content_length(&self) -> Option<u64> {
        self.resp.content_length()
    }

    /// The next piece of the body, `None` at its end. A connection that breaks mid-body is a
    /// [`ClientError::Transport`] error.
    ///
    /// Cancel safety: dropping the future loses no bytes already returned.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, ClientError> {
        self.resp
            .chunk()
            .await
            .map_err(|err| ClientError::Transport {
                method: Method::GET,
                url: self.url.clone(),
                err,
            })
    }
}

/// A client of one control node.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<Secret>,
    http: reqwest::Client,
}

/// Percent-encodes a path segment (host references are ids, MACs or hostnames).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client of the control node at `base` (`http://10.0.0.1:8080`), authenticating with
    /// `token` (the admin token, or a host's secret for the machine methods).
    pub fn new(base: &str, token: Option<Secret>) -> Self {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        }
    }

    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        query: Option<&EventsQuery>,
        body: Option<&B>,
    ) -> Result<(reqwest::Response, String), ClientError> {
        let url = format!("{}{API_PREFIX}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        if let Some(q) = query {
            req = req.query(q);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|err| ClientError::Transport {
            method: method.clone(),
            url: url.clone(),
            err,
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok((resp, url));
        }
        let text = resp.text().await.unwrap_or_default();
        let (message, request_id) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => (b.message, b.request_id),
            Err(_) => (text, None),
        };
        Err(ClientError::Api {
            method,
            url,
            status,
            message,
            request_id,
        })
    }

    async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let (resp, url) = self.send(method.clone(), path, None, body).await?;
        let bytes = resp.bytes().await.map_err(|err| ClientError::Transport {
            method: method.clone(),
            url: url.clone(),
            err,
        })?;
        serde_json::from_slice(&bytes).map_err(|err| ClientError::Decode { method, url, err })
    }

    async fn call_empty<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), ClientError> {
        self.send(method, path, None, body).await.map(drop)
    }

    /// `GET /hosts`.
    pub async fn hosts(&self) -> Result<Vec<HostSummary>, ClientError> {
        self.call(Method::GET, "/hosts", None::<&()>).await
    }

    /// `GET /hosts/{host}` (id, MAC or hostname).
    pub async fn host(&self, host: &str) -> Result<HostDetail, ClientError> {
        let path = format!("/hosts/{}", segment(host));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `POST /hosts/{host}/deploy`.
    pub async fn deploy(
        &self,
        host: &str,
        req: &DeployRequest,
    ) -> Result<HostSummary, ClientError> {
        let path = format!("/hosts/{}/deploy", segment(host));
        self.call(Method::POST, &path, Some(req)).await
    }

    /// `POST /hosts/{host}/redeploy`.
    pub async fn redeploy(
        &self,
        host: &str,
        req: &RedeployRequest,
    ) -> Result<HostSummary, ClientError> {
        let path = format!("/hosts/{}/redeploy", segment(host));
        self.call(Method::POST, &path, Some(req)).await
    }

    /// `POST /hosts/{host}/retry`.
    pub async fn retry(&self, host: &str) -> Result<HostSummary, ClientError> {
        let path = format!("/hosts/{}/retry", segment(host));
        self.call(Method::POST, &path, None::<&()>).await
    }

    /// `DELETE /hosts/{host}`.
    pub async fn delete_host(&self, host: &str) -> Result<(), ClientError> {
        let path = format!("/hosts/{}", segment(host));
        self.call_empty(Method::DELETE, &path, None::<&()>).await
    }

    /// `GET /images`.
    pub async fn images(&self) -> Result<Vec<ImageInfo>, ClientError> {
        self.call(Method::GET, "/images", None::<&()>).await
    }

    /// `POST /images`.
    pub async fn import_image(&self, req: &ImportImageRequest) -> Result<ImageInfo, ClientError> {
        self.call(Method::POST, "/images", Some(req)).await
    }

    /// `GET /rules`.
    pub async fn rules(&self) -> Result<Vec<Rule>, ClientError> {
        self.call(Method::GET, "/rules", None::<&()>).await
    }

    /// `POST /rules`.
    pub async fn add_rule(&self, rule: &NewRule) -> Result<Rule, ClientError> {
        self.call(Method::POST, "/rules", Some(rule)).await
    }

    /// `DELETE /rules/{id}`.
    pub async fn delete_rule(&self, id: RuleId) -> Result<(), ClientError> {
        self.call_empty(Method::DELETE, &format!("/rules/{id}"), None::<&()>)
            .await
    }

    /// `GET /events`.
    pub async fn events(&self, query: &EventsQuery) -> Result<Vec<Event>, ClientError> {
        let q = EventsQuery {
            follow: None,
            ..query.clone()
        };
        let (resp, url) = self
            .send(Method::GET, "/events", Some(&q), None::<&()>)
            .await?;
        let bytes = resp.bytes().await.map_err(|err| ClientError::Transport {
            method: Method::GET,
            url: url.clone(),
            err,
        })?;
        serde_json::from_slice(&bytes).map_err(|err| ClientError::Decode {
            method: Method::GET,
            url,
            err,
        })
    }

    /// `GET /events?follow=true`: calls `on_event` for every event until the server ends the
    /// stream or `on_event` returns `false`.
    ///
    /// Cancel safety: dropping the future closes the stream; no event is half-delivered.
    pub async fn follow_events(
        &self,
        query: &EventsQuery,
        mut on_event: impl FnMut(Event) -> bool,
    ) -> Result<(), ClientError> {
        let q = EventsQuery {
            follow: Some(true),
            ..query.clone()
        };
        let (mut resp, url) = self
            .send(Method::GET, "/events", Some(&q), None::<&()>)
            .await?;
        let mut buf = Vec::new();
        loop {
            let chunk = resp.chunk().await.map_err(|err| ClientError::Transport {
                method: Method::GET,
                url: url.clone(),
                err,
            })?;
            let Some(chunk) = chunk else {
                return Ok(());
            };
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let ev = serde_json::from_slice(&line).map_err(|err| ClientError::Decode {
                    method: Method::GET,
                    url: url.clone(),
                    err,
                })?;
                if !on_event(ev) {
                    return Ok(());
                }
            }
        }
    }

    /// `GET /machine/plan` (imager secret).
    pub async fn machine_plan(&self) -> Result<MachinePlan, ClientError> {
        self.call(Method::GET, "/machine/plan", None::<&()>).await
    }

    /// `POST /machine/inventory` (imager secret).
    pub async fn post_inventory(
        &self,
        inv: &HardwareInventory,
    ) -> Result<HostSummary, ClientError> {
        self.call(Method::POST, "/machine/inventory", Some(inv))
            .await
    }

    /// `POST /machine/progress` (imager secret).
    pub async fn report_progress(&self, r: &ProgressReport) -> Result<HostSummary, ClientError> {
        self.call(Method::POST, "/machine/progress", Some(r)).await
    }

    /// `POST /machine/result` (imager secret).
    pub async fn report_result(&self, r: &ImagingResult) -> Result<HostSummary, ClientError> {
        self.call(Method::POST, "/machine/result", Some(r)).await
    }

    /// `GET {artifact_base}{file}` from byte `offset` on (`Range: bytes=N-` when `offset > 0`).
    /// Artifacts are public, so no credentials are sent. A ranged request must be answered
    /// `206 Partial Content`.
    pub async fn download(
        &self,
        artifact_base: &str,
        file: &str,
        offset: u64,
    ) -> Result<Download, ClientError> {
        let url = format!(
            "{}/{}/{}",
            self.base,
            artifact_base.trim_matches('/'),
            segment(file)
        );
        let mut req = self.http.get(&url);
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let resp = req.send().await.map_err(|err| ClientError::Transport {
            method: Method::GET,
            url: url.clone(),
            err,
        })?;
        let status = resp.status();
        if !status.is_success() {
            let message = resp.text().await.unwrap_or_default();
            return Err(ClientError::Api {
                method: Method::GET,
                url,
                status,
                message,
                request_id: None,
            });
        }
        if offset > 0 && status != StatusCode::PARTIAL_CONTENT {
            return Err(ClientError::RangeIgnored {
                url,
                offset,
                status,
            });
        }
        Ok(Download { url, resp })
    }

    /// `POST /machine/enrol` (enrolment secret).
    pub async fn enrol(&self, req: &EnrolRequest) -> Result<EnrolResponse, ClientError> {
        self.call(Method::POST, "/machine/enrol", Some(req)).await
    }
}

//! The HTTP boot server: router, error mapping, start and stop.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use camino::Utf8PathBuf;
use common::ErrorChain;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::{debug, error, info};

use super::config::Config;
use super::files::serve_file;
use super::scripts::{BootScripts, ChooseError, Scripts, TemplateError};
use crate::MacAddr;
use crate::tftp::{IpxeBinaries, IpxeError, ResolveError, confine};

/// What the HTTP boot server needs from its embedder.
pub struct HttpDeps {
    /// Chooses each host's iPXE script.
    pub scripts: Arc<dyn BootScripts>,
    /// More routes served by the same server (the control node's REST API).
    pub extra_routes: Option<Router>,
}

impl std::fmt::Debug for HttpDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpDeps")
            .field("extra_routes", &self.extra_routes.is_some())
            .finish_non_exhaustive()
    }
}

/// Why the HTTP boot server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpStartError {
    /// The listening socket could not be bound.
    #[error("failed to bind the HTTP socket on {addr}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// The boot directory is missing or unreadable.
    #[error("boot directory `{path}` is not usable")]
    BootDir {
        /// The configured directory.
        path: Utf8PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// The iPXE binaries are not installed.
    #[error("cannot serve the iPXE binaries")]
    Ipxe(#[source] IpxeError),
    /// A template does not load.
    #[error("cannot load the iPXE script templates")]
    Templates(#[source] TemplateError),
}

/// A request that failed; the one mapping of errors to HTTP responses.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("bad request: {reason}")]
    BadRequest { reason: String },
    #[error("failed to read `{path}`")]
    Io {
        path: Utf8PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("failed to render the boot script")]
    Script(#[source] TemplateError),
    #[error("failed to choose the boot script of {mac}")]
    Choose {
        mac: MacAddr,
        #[source]
        err: ChooseError,
    },
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = match &self {
            HttpError::NotFound { .. } => StatusCode::NOT_FOUND,
            HttpError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            HttpError::Io { err, .. } if err.kind() == std::io::ErrorKind::NotFound => {
                StatusCode::NOT_FOUND
            }
            HttpError::Io { .. } | HttpError::Script(_) | HttpError::Choose { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        if status.is_server_error() {
            error!(error = %ErrorChain(&self), "request failed");
            (status, "internal server error\n").into_response()
        } else {
            debug!(error = %ErrorChain(&self), status = status.as_u16(), "request refused");
            (status, format!("{self}\n")).into_response()
        }
    }
}

struct AppState {
    boot_dir: Utf8PathBuf,
    ipxe: Option<IpxeBinaries>,
    scripts: Scripts,
    chooser: Arc<dyn BootScripts>,
}

type Shared = State<Arc<AppState>>;

async fn boot_script(State(app): Shared, Path(file): Path<String>) -> Result<Response, HttpError> {
    let mac = file
        .strip_suffix(".ipxe")
        .and_then(|m| m.parse::<MacAddr>().ok())
        .ok_or_else(|| HttpError::BadRequest {
            reason: format!("`{file}` is not <mac>.ipxe"),
        })?;
    let choice = app
        .chooser
        .script_for(mac)
        .await
        .map_err(|err| HttpError::Choose { mac, err })?;
    let template = choice.as_ref().map(|c| c.template.clone());
    let script = app.scripts.render(mac, choice).map_err(HttpError::Script)?;
    debug!(%mac, template = template.as_deref().unwrap_or("default"), "boot script served");
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        script,
    )
        .into_response())
}

async fn ipxe_binary(
    State(app): Shared,
    Path(file): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let path = app
        .ipxe
        .as_ref()
        .and_then(|i| i.path_of(&file))
        .ok_or(HttpError::NotFound { what: file })?;
    serve_file(&path, &method, &headers).await
}

async fn boot_file(
    State(app): Shared,
    Path(path): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let rel =
        crate::tftp::policy::relative_path(&path, "").map_err(|err| HttpError::BadRequest {
            reason: err.to_string(),
        })?;
    let real = match confine(&app.boot_dir, &rel) {
        Ok(Some(real)) => real,
        Ok(None) | Err(ResolveError::Escapes { .. }) => {
            return Err(HttpError::NotFound { what: rel });
        }
        Err(err) => {
            return Err(HttpError::Io {
                path: app.boot_dir.join(&rel),
                err: std::io::Error::other(ErrorChain(&err).to_string()),
            });
        }
    };
    serve_file(&real, &method, &headers).await
}

/// How long [`ServerHandle::shutdown`] lets requests in flight finish.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The HTTP boot server.
#[derive(Debug)]
pub struct Server;

/// A running HTTP boot server; dropping it stops the server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    token: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and lets requests in flight finish for up to
    /// [`DRAIN_TIMEOUT`], then drops what is left (a long download, say).
    pub async fn shutdown(mut self) {
        self.token.cancel();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(DRAIN_TIMEOUT, &mut task)
                .await
                .is_err()
        {
            info!(
                proto = "http",
                "requests still running after the drain timeout, aborted"
            );
            task.abort();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Builds the router: `/boot/{mac}.ipxe`, `/ipxe/{file}`, `/files/{*path}`, plus `extra`.
pub(crate) fn router(cfg: &Config, deps: HttpDeps) -> Result<Router, HttpStartError> {
    let boot_dir = cfg
        .boot_dir
        .canonicalize_utf8()
        .map_err(|err| HttpStartError::BootDir {
            path: cfg.boot_dir.clone(),
            err,
        })?;
    let ipxe = match &cfg.ipxe_dir {
        Some(d) => Some(IpxeBinaries::locate(d).map_err(HttpStartError::Ipxe)?),
        None => None,
    };
    let scripts = Scripts::load(cfg.template_dir.as_deref(), &cfg.default_boot)
        .map_err(HttpStartError::Templates)?;
    let state = Arc::new(AppState {
        boot_dir,
        ipxe,
        scripts,
        chooser: deps.scripts,
    });
    let boot = Router::new()
        .route("/boot/{file}", get(boot_script))
        .route("/ipxe/{file}", get(ipxe_binary))
        .route("/files/{*path}", get(boot_file))
        .with_state(state);
    let app = match deps.extra_routes {
        Some(extra) => boot.merge(extra),
        None => boot,
    };
    // Every request gets an `x-request-id` (kept if the client sent one), echoed in the response
    // and recorded in the request's span, so a 5xx logged with its error chain can be found.
    let x_request_id = header::HeaderName::from_static("x-request-id");
    let trace = TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
        let id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        tracing::debug_span!("http_request", method = %req.method(), uri = %req.uri(), request_id = %id)
    });
    Ok(app
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(trace)
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid)))
}

impl Server {
    /// Binds the listening socket and starts serving.
    pub async fn start(cfg: Config, deps: HttpDeps) -> Result<ServerHandle, HttpStartError> {
        let app = router(&cfg, deps)?;
        let bind_err = |err| HttpStartError::Bind {
            addr: cfg.listen,
            err,
        };
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let token = CancellationToken::new();
        let stop = token.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(err) = serve.await {
                error!(error = %ErrorChain(&err), "HTTP server stopped");
            }
        });
        info!(proto = "http", addr = %local_addr, "listening");
        Ok(ServerHandle {
            local_addr,
            token,
            task: Some(task),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{DefaultBoot, DefaultScripts};
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(app: &Router, uri: &str, range: Option<&str>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut req = Request::get(uri);
        if let Some(r) = range {
            req = req.header(header::RANGE, r);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let (parts, body) = resp.into_parts();
        let body = to_bytes(body, usize::MAX).await.expect("body");
        (parts.status, parts.headers, body.to_vec())
    }

    #[tokio::test]
    async fn routes_through_oneshot() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = camino::Utf8Path::from_path(tmp.path()).expect("utf-8");
        std::fs::write(dir.join("a.bin"), b"0123456789").expect("write");
        let cfg = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            boot_dir: dir.to_owned(),
            ipxe_dir: None,
            template_dir: None,
            default_boot: DefaultBoot::default(),
        };
        let deps = HttpDeps {
            scripts: Arc::new(DefaultScripts),
            extra_routes: None,
        };
        let app = router(&cfg, deps).expect("router");

        let (s, h, body) = get(&app, "/boot/52:54:00:00:00:01.ipxe", None).await;
        assert_eq!(s, StatusCode::OK);
        assert!(h.contains_key("x-request-id"), "no request id: {h:?}");
        assert!(String::from_utf8_lossy(&body).contains("sanboot --no-describe --drive 0x80"));
        let (s, _, _) = get(&app, "/boot/5254.ipxe", None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);

        let (s, h, body) = get(&app, "/files/a.bin", Some("bytes=2-4")).await;
        assert_eq!(s, StatusCode::PARTIAL_CONTENT);
        assert_eq!(body, b"234");
        assert_eq!(h[header::CONTENT_RANGE], "bytes 2-4/10");
        let (s, h, _) = get(&app, "/files/a.bin", Some("bytes=10-")).await;
        assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(h[header::CONTENT_RANGE], "bytes */10");
        let (s, _, _) = get(&app, "/ipxe/ipxe.efi", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "iPXE binaries disabled");
    }
}

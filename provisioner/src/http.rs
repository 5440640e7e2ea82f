//! The REST API: axum handlers over [`Control`], authentication, the one `ApiError` →
//! response mapping, and the OpenAPI document.
//!
//! Operator routes need the admin token (`Authorization: Bearer <token>`). Machine routes
//! (`/api/v1/machine/...`) take the host's imager secret, or its enrolment secret for `enrol`:
//! the host is the secret's owner, so no request can touch another host. Image artifacts are
//! served read-only under `/images/{name}/{file}` (with HTTP range requests).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error};
use utoipa::OpenApi;

use crate::api::{
    self, DeployRequest, EnrolRequest, EnrolResponse, ErrorBody, Event, EventSeq, EventsQuery,
    HardwareInventory, HostDetail, HostSummary, ImageInfo, ImagingResult, ImportImageRequest,
    MachinePlan, NewRule, ProgressReport, RedeployRequest, Rule, RuleId,
};
use crate::control::{Control, ControlError};
use crate::secret::{Secret, SecretHash};
use crate::store::{SecretKind, Store};

/// Most events one `GET /api/v1/events` returns without `follow`.
const MAX_EVENTS: u32 = 10_000;

/// Most requests handled at once (an event stream counts only until its headers are sent);
/// further requests wait for a slot.
const MAX_IN_FLIGHT: usize = 256;

/// The error of every handler, mapped to a response in one place.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// Missing or wrong credentials.
    Unauthorized,
    /// Malformed request.
    BadRequest(String),
    /// A control-node operation failed.
    Control(ControlError),
}

impl From<ControlError> for ApiError {
    fn from(err: ControlError) -> Self {
        ApiError::Control(err)
    }
}

/// Marks a 500 response whose error the request middleware logs under the request id.
#[derive(Clone)]
struct InternalError(Arc<ControlError>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let client = |status: StatusCode, kind: &str, message: String| {
            debug!(status = status.as_u16(), %message, "request rejected");
            let body = ErrorBody {
                error: kind.to_owned(),
                message,
                request_id: None,
            };
            (status, axum::Json(body)).into_response()
        };
        match self {
            ApiError::Unauthorized => {
                let mut r = client(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing or invalid bearer token".into(),
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
            ApiError::BadRequest(m) => client(StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::Control(err) if err.is_client_error() => {
                let status = match &err {
                    ControlError::HostNotFound { .. }
                    | ControlError::ImageNotFound { .. }
                    | ControlError::RuleNotFound { .. } => StatusCode::NOT_FOUND,
                    ControlError::ImageExists { .. }
                    | ControlError::Transition { .. }
                    | ControlError::Contended { .. }
                    | ControlError::NoInventory { .. } => StatusCode::CONFLICT,
                    ControlError::NoDisk { .. }
                    | ControlError::Hostname { .. }
                    | ControlError::Import { .. }
                    | ControlError::Store { .. }
                    | ControlError::Join { .. } => StatusCode::BAD_REQUEST,
                };
                let kind = match status {
                    StatusCode::NOT_FOUND => "not_found",
                    StatusCode::CONFLICT => "conflict",
                    _ => "bad_request",
                };
                client(status, kind, common::ErrorChain(&err).to_string())
            }
            ApiError::Control(err) => {
                let mut r = StatusCode::INTERNAL_SERVER_ERROR.into_response();
                r.extensions_mut().insert(InternalError(Arc::new(err)));
                r
            }
        }
    }
}

/// JSON body extractor whose rejection goes through [`ApiError`].
struct JsonBody<T>(T);

impl<T: DeserializeOwned, St: Send + Sync> FromRequest<St> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &St) -> Result<Self, ApiError> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(v)| JsonBody(v))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

fn json<T: Serialize>(v: T) -> Response {
    axum::Json(v).into_response()
}

/// Opens a span with a request id around every request, and turns an [`InternalError`] into
/// the generic 500 body after logging its full chain.
async fn request_span(req: Request, next: Next) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    async move {
        debug!("request received");
        let mut resp = next.run(req).await;
        if let Some(InternalError(err)) = resp.extensions_mut().remove::<InternalError>() {
            error!(error = %common::ErrorChain(&*err), "request failed");
            let body = ErrorBody {
                error: "internal".into(),
                message: "internal server error".into(),
                request_id: Some(request_id),
            };
            return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
        }
        debug!(status = resp.status().as_u16(), "request done");
        resp
    }
    .instrument(span)
    .await
}

fn bearer(headers: &HeaderMap) -> Option<Secret> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = v.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then(|| Secret::from_plaintext(token))
}

/// The state behind the router.
struct AppState<S> {
    control: Control<S>,
    admin: SecretHash,
    shutdown: CancellationToken,
}

type St<S> = State<Arc<AppState<S>>>;

async fn require_admin<S: Store>(
    State(st): St<S>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match bearer(req.headers()) {
        Some(token) if token.hash().ct_eq(&st.admin) => Ok(next.run(req).await),
        Some(_) | None => Err(ApiError::Unauthorized),
    }
}

async fn machine_host<S: Store>(
    st: &AppState<S>,
    headers: &HeaderMap,
) -> Result<api::HostId, ApiError> {
    let secret = bearer(headers).ok_or(ApiError::Unauthorized)?;
    st.control
        .authenticate(SecretKind::Imager, &secret)
        .await?
        .ok_or(ApiError::Unauthorized)
}

/// Builds the API router. `admin` is the hash of the admin token; `shutdown` ends event
/// streams so a graceful shutdown does not wait for them.
pub fn router<S: Store>(
    control: Control<S>,
    admin: SecretHash,
    shutdown: CancellationToken,
) -> Router {
    let images = tower_http::services::ServeDir::new(control.images_store().root());
    let st = Arc::new(AppState {
        control,
        admin,
        shutdown,
    });
    let admin_routes = Router::new()
        .route("/hosts", get(list_hosts::<S>))
        .route(
            "/hosts/{host}",
            get(show_host::<S>).delete(delete_host::<S>),
        )
        .route("/hosts/{host}/deploy", post(deploy_host::<S>))
        .route("/hosts/{host}/redeploy", post(redeploy_host::<S>))
        .route("/hosts/{host}/retry", post(retry_host::<S>))
        .route("/images", get(list_images::<S>).post(import_image::<S>))
        .route("/rules", get(list_rules::<S>).post(add_rule::<S>))
        .route("/rules/{id}", axum::routing::delete(delete_rule::<S>))
        .route("/events", get(list_events::<S>))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&st),
            require_admin::<S>,
        ));
    let machine_routes = Router::new()
        .route("/machine/plan", get(machine_plan::<S>))
        .route("/machine/inventory", post(post_inventory::<S>))
        .route("/machine/progress", post(post_progress::<S>))
        .route("/machine/result", post(post_result::<S>))
        .route("/machine/enrol", post(enrol::<S>))
        .route("/openapi.json", get(openapi_json));
    Router::new()
        .nest(api::API_PREFIX, admin_routes.merge(machine_routes))
        .nest_service("/images", images)
        .fallback(|| async { ApiError::BadRequest("no such route".into()) })
        .with_state(st)
        .layer(middleware::from_fn(request_span))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_IN_FLIGHT,
        ))
}

/// The OpenAPI document of this API, pretty-printed JSON (committed as `openapi.json`).
pub fn openapi_json_string() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .expect("invariant: the OpenAPI document always serializes");
    s.push('\n');
    s
}

async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi_json_string(),
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "provisioner", description = "Control node API: hosts, images, rules, events and the machine-facing imaging endpoints."),
    paths(
        list_hosts, show_host, delete_host, deploy_host, redeploy_host, retry_host,
        list_images, import_image, list_rules, add_rule, delete_rule, list_events,
        machine_plan, post_inventory, post_progress, post_result, enrol,
    ),
    modifiers(&SecurityAddon),
)]
struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let c = openapi.components.get_or_insert_with(Default::default);
        for name in ["admin_token", "imager_secret", "enrol_secret"] {
            c.add_security_scheme(
                name,
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Operator routes

/// List hosts.
#[utoipa::path(get, path = "/api/v1/hosts", tag = "hosts",
    security(("admin_token" = [])),
    responses((status = 200, body = [HostSummary]), (status = 401, body = ErrorBody)))]
async fn list_hosts<S: Store>(State(st): St<S>) -> Result<Response, ApiError> {
    Ok(json(st.control.hosts().await?))
}

/// Show one host (by id, MAC or hostname) with its inventory.
#[utoipa::path(get, path = "/api/v1/hosts/{host}", tag = "hosts",
    params(("host" = String, Path, description = "host id, MAC or hostname")),
    security(("admin_token" = [])),
    responses((status = 200, body = HostDetail), (status = 404, body = ErrorBody)))]
async fn show_host<S: Store>(
    State(st): St<S>,
    Path(host): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json(st.control.host(&host).await?))
}

/// Delete a host with its inventory and secrets.
#[utoipa::path(delete, path = "/api/v1/hosts/{host}", tag = "hosts",
    params(("host" = String, Path, description = "host id, MAC or hostname")),
    security(("admin_token" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_host<S: Store>(
    State(st): St<S>,
    Path(host): Path<String>,
) -> Result<Response, ApiError> {
    st.control.delete(&host).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Deploy an image on an inspected, ready or failed host.
#[utoipa::path(post, path = "/api/v1/hosts/{host}/deploy", tag = "hosts",
    params(("host" = String, Path, description = "host id, MAC or hostname")),
    request_body = DeployRequest,
    security(("admin_token" = [])),
    responses((status = 200, body = HostSummary), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn deploy_host<S: Store>(
    State(st): St<S>,
    Path(host): Path<String>,
    JsonBody(req): JsonBody<DeployRequest>,
) -> Result<Response, ApiError> {
    Ok(json(st.control.deploy(&host, req).await?))
}

/// Redeploy a deployed host: its next PXE boot gets the deploy ramdisk.
#[utoipa::path(post, path = "/api/v1/hosts/{host}/redeploy", tag = "hosts",
    params(("host" = String, Path, description = "host id, MAC or hostname")),
    request_body = RedeployRequest,
    security(("admin_token" = [])),
    responses((status = 200, body = HostSummary), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn redeploy_host<S: Store>(
    State(st): St<S>,
    Path(host): Path<String>,
    JsonBody(req): JsonBody<RedeployRequest>,
) -> Result<Response, ApiError> {
    Ok(json(st.control.redeploy(&host, req).await?))
}

/// Retry a failed host.
#[utoipa::path(post, path = "/api/v1/hosts/{host}/retry", tag = "hosts",
    params(("host" = String, Path, description = "host id, MAC or hostname")),
    security(("admin_token" = [])),
    responses((status = 200, body = HostSummary), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn retry_host<S: Store>(
    State(st): St<S>,
    Path(host): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json(st.control.retry(&host).await?))
}

/// List images.
#[utoipa::path(get, path = "/api/v1/images", tag = "images",
    security(("admin_token" = [])),
    responses((status = 200, body = [ImageInfo])))]
async fn list_images<S: Store>(State(st): St<S>) -> Result<Response, ApiError> {
    Ok(json(st.control.images().await?))
}

/// Import an image directory (on the control node) built by image-builder; every artifact's
/// size and SHA-256 is checked against `manifest.json` before it is accepted.
#[utoipa::path(post, path = "/api/v1/images", tag = "images",
    request_body = ImportImageRequest,
    security(("admin_token" = [])),
    responses((status = 201, body = ImageInfo), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn import_image<S: Store>(
    State(st): St<S>,
    JsonBody(req): JsonBody<ImportImageRequest>,
) -> Result<Response, ApiError> {
    let info = st.control.import_image(req).await?;
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

/// List rules in evaluation order (first match wins).
#[utoipa::path(get, path = "/api/v1/rules", tag = "rules",
    security(("admin_token" = [])),
    responses((status = 200, body = [Rule])))]
async fn list_rules<S: Store>(State(st): St<S>) -> Result<Response, ApiError> {
    Ok(json(st.control.rules().await?))
}

/// Append a rule.
#[utoipa::path(post, path = "/api/v1/rules", tag = "rules",
    request_body = NewRule,
    security(("admin_token" = [])),
    responses((status = 201, body = Rule), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn add_rule<S: Store>(
    State(st): St<S>,
    JsonBody(rule): JsonBody<NewRule>,
) -> Result<Response, ApiError> {
    let rule = st.control.add_rule(rule).await?;
    Ok((StatusCode::CREATED, axum::Json(rule)).into_response())
}

/// Delete a rule.
#[utoipa::path(delete, path = "/api/v1/rules/{id}", tag = "rules",
    params(("id" = u64, Path, description = "rule id")),
    security(("admin_token" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_rule<S: Store>(
    State(st): St<S>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: RuleId = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid rule id `{id}`")))?;
    st.control.delete_rule(id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The event log; with `follow=true`, a never-ending stream of JSON lines
/// (`application/x-ndjson`): the backlog after `after`, then each new event.
#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    params(EventsQuery),
    security(("admin_token" = [])),
    responses((status = 200, body = [Event], description = "JSON array, or JSON lines with follow=true")))]
async fn list_events<S: Store>(
    State(st): St<S>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let after = q.after.map(EventSeq);
    let limit = q.limit.unwrap_or(MAX_EVENTS).min(MAX_EVENTS);
    if !q.follow.unwrap_or(false) {
        return Ok(json(st.control.events(after, q.host, limit).await?));
    }
    // Subscribe before reading the backlog so nothing falls in between.
    let rx = st.control.subscribe();
    let backlog = st.control.events(after, q.host, MAX_EVENTS).await?;
    let last = backlog.last().map(|e| e.seq).or(after);
    let follow = futures::stream::unfold(
        (rx, last, Arc::clone(&st), q.host),
        |(mut rx, mut last, st, host)| async move {
            loop {
                let received = tokio::select! {
                    () = st.shutdown.cancelled() => return None,
                    r = rx.recv() => r,
                };
                let batch = match received {
                    Ok(ev) => vec![ev],
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind the channel: catch up from the log.
                        st.control
                            .events(last, host, MAX_EVENTS)
                            .await
                            .unwrap_or_default()
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                };
                let batch: Vec<Event> = batch
                    .into_iter()
                    .filter(|e| Some(e.seq) > last && host.is_none_or(|h| h == e.host))
                    .collect();
                if let Some(e) = batch.last() {
                    last = Some(e.seq);
                    return Some((batch, (rx, last, st, host)));
                }
            }
        },
    );
    let lines = futures::stream::iter(backlog)
        .chain(follow.flat_map(futures::stream::iter))
        .map(|e| {
            let mut line = serde_json::to_vec(&e).expect("invariant: events serialize to JSON");
            line.push(b'\n');
            Ok::<_, Infallible>(Bytes::from(line))
        });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

// ---------------------------------------------------------------------------------------------
// Machine routes

/// What the imager should do next. A `deploy` answer carries a fresh one-time enrolment secret.
#[utoipa::path(get, path = "/api/v1/machine/plan", tag = "machine",
    security(("imager_secret" = [])),
    responses((status = 200, body = MachinePlan), (status = 401, body = ErrorBody)))]
async fn machine_plan<S: Store>(
    State(st): St<S>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let host = machine_host(&st, &headers).await?;
    Ok(json(st.control.machine_plan(host).await?))
}

/// The imager posts its host's hardware inventory.
#[utoipa::path(post, path = "/api/v1/machine/inventory", tag = "machine",
    request_body = HardwareInventory,
    security(("imager_secret" = [])),
    responses((status = 200, body = HostSummary), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn post_inventory<S: Store>(
    State(st): St<S>,
    headers: HeaderMap,
    JsonBody(inv): JsonBody<HardwareInventory>,
) -> Result<Response, ApiError> {
    let host = machine_host(&st, &headers).await?;
    Ok(json(st.control.post_inventory(host, inv).await?))
}

/// The imager reports progress of the current phase.
#[utoipa::path(post, path = "/api/v1/machine/progress", tag = "machine",
    request_body = ProgressReport,
    security(("imager_secret" = [])),
    responses((status = 200, body = HostSummary), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn post_progress<S: Store>(
    State(st): St<S>,
    headers: HeaderMap,
    JsonBody(report): JsonBody<ProgressReport>,
) -> Result<Response, ApiError> {
    let host = machine_host(&st, &headers).await?;
    Ok(json(st.control.report_progress(host, report).await?))
}

/// The imager reports verified, done or failed.
#[utoipa::path(post, path = "/api/v1/machine/result", tag = "machine",
    request_body = ImagingResult,
    security(("imager_secret" = [])),
    responses((status = 200, body = HostSummary), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn post_result<S: Store>(
    State(st): St<S>,
    headers: HeaderMap,
    JsonBody(result): JsonBody<ImagingResult>,
) -> Result<Response, ApiError> {
    let host = machine_host(&st, &headers).await?;
    Ok(json(st.control.report_result(host, result).await?))
}

/// The installed system enrols with its one-time enrolment secret.
#[utoipa::path(post, path = "/api/v1/machine/enrol", tag = "machine",
    request_body = EnrolRequest,
    security(("enrol_secret" = [])),
    responses((status = 200, body = EnrolResponse), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn enrol<S: Store>(
    State(st): St<S>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<EnrolRequest>,
) -> Result<Response, ApiError> {
    let secret = bearer(&headers).ok_or(ApiError::Unauthorized)?;
    match st.control.enrol(&secret, req).await? {
        Some(resp) => Ok(json(resp)),
        None => Err(ApiError::Unauthorized),
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;

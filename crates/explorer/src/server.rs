//! The explorer's HTTP server: the embedded page and its JSON API.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /` | | the page |
//! | `GET /assets/NAME` | | an embedded asset (`app.js`, `style.css`) |
//! | `GET /api/info` | | model depth, SAEs (`id`, `hook`, `site`, `d_sae`, dead and ultra-dense counts), limits, labels file and its problem if any |
//! | `POST /api/saes/SAE/activations` | `{"text", "hide_ultra_dense"?}` (default false) | per token (BOS left out): `position`, `token`, `text`, `top` latents (`latent`, `activation`, `label`); `max_activation` |
//! | `GET /api/saes/SAE/latents?q=&token=&sort=&offset=&limit=` | | `total` and a page of `latents` (`latent`, `label {text, source}`, `density`, `max_activation`, `dead`, `ultra_dense`); `q` searches labels, `token` the tokens a latent fires on in its top examples or promotes/suppresses; `sort` = `useful` (default: alive and not ultra-dense first, densest first; then ultra-dense, then dead), `density`, `density_ascending` or `latent`; `limit` ≤ 200 (default 50) |
//! | `GET /api/saes/SAE/latents/N` | | the dashboard: `label`, `automatic_label`, `density`, `fires`, `tokens`, `dead`, `ultra_dense`, `max_activation`, `histogram` (`lower`, `upper`, `count`), `examples` (`activation`, `focus`, `tokens` with `text` and `activation`), `promoted`, `suppressed` (`token`, `text`, `value`) |
//! | `PUT /api/saes/SAE/latents/N/label` | `{"text"}` (empty removes it) | the label now shown (`text`, `source`), saved before the answer |
//! | `POST /api/saes/SAE/latents/N/steer` | `{"prompt", "strength", "max_new_tokens"?}` (default 24) | `unsteered` and `steered` greedy continuations, and `max_strength` (see below) |
//!
//! **Steering strengths.** `strength` is in the latent's activation units (strength `a` adds
//! what the latent firing at `a` adds to the reconstruction) and may be negative. It must be
//! finite, and |strength| at most `max_strength`: [`crate::MAX_STEERING_RATIO`] (100, also in
//! `/api/info`'s `limits`) × the longest activation at the SAE's hook among the prompt's tokens
//! (BOS left out) ÷ the length of the latent's decoder direction — so the added vector is at
//! most 100 times as long as the activation it is added to. Past that the sum points within
//! 0.6° of the direction and the model's next RMS norm rescales its length away, so stronger
//! pushes change nothing but head for f32 overflow (at 1e20 the norm's sum of squares
//! overflows and the model emits only padding). `max_strength` is `null` for a latent whose
//! decoder direction is zero (any finite strength then adds nothing). A strength out of range
//! is refused with 400 and a message giving the bound; a steering whose logits come back not
//! finite or flat (every token's equal, the sign of an overflow), or whose continuation is
//! empty (the model ended the text at once or emitted only tokens without text), is refused
//! with 422 rather than answered with an empty continuation.
//!
//! **Errors.** Every error answer, whatever produced it, has the body `{"error": "…"}`
//! (`Content-Type: application/json`), the message naming the request (method and path) or
//! the input at fault, with status 400 (malformed: not UTF-8, not JSON, empty, out of range, a
//! path that is not valid percent-encoded UTF-8), 404 (unknown SAE, latent, asset or route),
//! 405 (a method the path does not take; `Allow` lists those it does), 409 (labels file
//! unusable), 413 (over a limit in [`crate::Explorer`], or a body over 2 MB, whether announced
//! by `Content-Length` or streamed), 422 (a steering refused as above) or 500 (the model, the
//! SAE or the disk failed). Errors that the HTTP framework produces itself are rewritten into
//! that form too ([`json_errors`]). A body over the limit is answered with `Connection: close`
//! as soon as it is known to be (before any of it is read when `Content-Length` announces
//! it); the server then reads and throws away up to [`DRAIN_LIMIT_BYTES`] more of it, while it
//! keeps coming, so that a client still sending its body reads the answer instead of a reset
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::ExplorerError;
use crate::state::{ApiError, Explorer, SearchQuery};

/// The page's files, compiled in: the only static paths served.
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("page/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("page/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("page/style.css"),
    ),
];

/// The largest request body read (axum's default limit, which also applies).
const MAX_BODY_BYTES: usize = 2 << 20;

/// The most bytes of an over-limit request body read and thrown away after its 413 is answered
/// (see [`refuse_body`]); a longer body has its connection closed under it.
pub const DRAIN_LIMIT_BYTES: u64 = 64 << 20;

/// How long the thrown-away rest of an over-limit body may pause before its connection is
/// closed (nginx's `lingering_timeout`).
const DRAIN_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Tokens generated by a steering request that names no `max_new_tokens`.
const DEFAULT_NEW_TOKENS: usize = 24;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

type Shared = Arc<Explorer>;
type ApiAnswer = Result<Response, ApiError>;

/// The router over `explorer` (for [`serve`] and tests).
pub fn router(explorer: Explorer) -> Router {
    Router::new()
        .route("/", get(|| async { asset("index.html") }))
        .route(
            "/assets/{name}",
            get(|Path(name): Path<String>| async move { asset(&name) }),
        )
        .route("/api/info", get(info))
        .route("/api/saes/{sae}/activations", post(activations))
        .route("/api/saes/{sae}/latents", get(search))
        .route("/api/saes/{sae}/latents/{latent}", get(latent))
        .route("/api/saes/{sae}/latents/{latent}/label", put(set_label))
        .route("/api/saes/{sae}/latents/{latent}/steer", post(steer))
        .fallback(|uri: Uri| async move {
            ApiError::NotFound(format!("no such page or endpoint: {}", uri.path()))
        })
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(Arc::new(explorer))
}

/// Rewrites every error answer that is not JSON yet — those axum makes itself: a wrong method
/// (405, empty), a path that does not decode (400) — into the documented `{"error": "…"}`,
/// keeping the status and the `Allow` header. It also reads every request body itself, under
/// [`MAX_BODY_BYTES`], so that a body over it is refused the same way whether its length was
/// announced or it was streamed ([`refuse_body`]).
async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let too_large = |size: String| {
        ApiError::TooLarge(format!(
            "the request body is {size} bytes; the limit is {MAX_BODY_BYTES} ({method} {path})"
        ))
    };
    let (parts, mut body) = request.into_parts();
    // A body announced as over the limit is refused before any of it is read.
    let announced = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(length) = announced.filter(|&l| l > MAX_BODY_BYTES as u64) {
        // A client that waits for `100 Continue` sends nothing after a final answer.
        let waits = parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        return refuse_body(too_large(length.to_string()), (!waits).then_some(body));
    }
    let mut buffered = Vec::new();
    while let Some(frame) = next_frame(&mut body).await {
        match frame {
            Ok(data) => {
                if let Some(data) = data {
                    buffered.extend_from_slice(&data);
                }
                if buffered.len() > MAX_BODY_BYTES {
                    return refuse_body(too_large(format!("over {MAX_BODY_BYTES}")), Some(body));
                }
            }
            Err(e) => {
                return ApiError::BadRequest(format!(
                    "the request body could not be read: {e} ({method} {path})"
                ))
                .into_response();
            }
        }
    }
    let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(buffered));
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match (status, &allow) {
        (StatusCode::METHOD_NOT_ALLOWED, Some(allow)) => format!(
            "{method} is not allowed on {path} (allowed: {})",
            allow.to_str().unwrap_or("?")
        ),
        (StatusCode::METHOD_NOT_ALLOWED, None) => {
            format!("{method} is not allowed on {path} (see the API table in the docs)")
        }
        _ if !body.is_empty() => format!("{body} ({method} {path})"),
        _ => format!(
            "{} ({method} {path})",
            status.canonical_reason().unwrap_or("error")
        ),
    };
    let mut answer = (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    if let Some(allow) = allow {
        answer.headers_mut().insert(header::ALLOW, allow);
    }
    answer
}

/// The next frame of a request body: its data (`None` for a frame of trailers), `None` at the
/// end.
async fn next_frame(body: &mut axum::body::Body) -> Option<Result<Option<Bytes>, axum::Error>> {
    use axum::body::HttpBody as _;
    let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_frame(cx)).await;
    frame.map(|frame| frame.map(|frame| frame.into_data().ok()))
}

/// The 413 answer `error` to a body over the limit, with `Connection: close`. What is left of
/// the body (`rest`: `None` when the client waits for `100 Continue` and so sends none) is read
/// and thrown away in the background, up to [`DRAIN_LIMIT_BYTES`] and while it keeps coming
/// ([`DRAIN_IDLE`]): a server that closed the connection with the body unread would reset it,
/// and a client still sending would see a broken pipe instead of the answer.
fn refuse_body(error: ApiError, rest: Option<axum::body::Body>) -> Response {
    if let Some(mut rest) = rest {
        tokio::spawn(async move {
            let mut read = 0u64;
            while read <= DRAIN_LIMIT_BYTES {
                match tokio::time::timeout(DRAIN_IDLE, next_frame(&mut rest)).await {
                    Ok(Some(Ok(data))) => read += data.map_or(0, |d| d.len() as u64),
                    _ => return,
                }
            }
        });
    }
    let mut response = error.into_response();
    response.headers_mut().insert(
        header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// Serves `explorer` on `address` until Ctrl-C, printing the page's URL first.
pub fn serve(explorer: Explorer, address: SocketAddr) -> crate::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|cause| ExplorerError::Listen { address, cause })?;
        let bound = listener.local_addr()?;
        println!("explorer: http://{bound}/");
        if !bound.ip().is_loopback() {
            eprintln!(
                "[explore] warning: listening on {bound}, reachable from other machines; the API can edit the labels file"
            );
        }
        eprintln!("[explore] Ctrl-C stops the server");
        axum::serve(listener, router(explorer))
            .with_graceful_shutdown(async {
                tokio::signal::ctrl_c().await.ok();
            })
            .await?;
        Ok(())
    })
}

/// An explorer served on a background thread ([`spawn`]); dropping it stops the server.
pub struct RunningServer {
    /// The page's address, `http://HOST:PORT` (no trailing slash).
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<crate::Result<()>>>,
}

impl RunningServer {
    /// Stops the server and reports how it ended.
    pub fn stop(mut self) -> crate::Result<()> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> crate::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ExplorerError::ServerPanicked),
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}

/// Serves `explorer` on `address` (port 0: any free one) from a background thread, returning
/// once it listens: for tests, notebooks and a researcher's own binaries.
pub fn spawn(explorer: Explorer, address: SocketAddr) -> crate::Result<RunningServer> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(address))
        .map_err(|cause| ExplorerError::Listen { address, cause })?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        runtime.block_on(async move {
            axum::serve(listener, router(explorer))
                .with_graceful_shutdown(async {
                    stopped.await.ok();
                })
                .await?;
            Ok(())
        })
    });
    Ok(RunningServer {
        url,
        stop: Some(stop),
        thread: Some(thread),
    })
}

fn asset(name: &str) -> Response {
    match ASSETS.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, body)) => {
            ([(header::CONTENT_TYPE, *content_type)], *body).into_response()
        }
        None => ApiError::NotFound(format!("no asset `{name}`")).into_response(),
    }
}

fn json(value: impl serde::Serialize) -> ApiAnswer {
    Ok(axum::Json(value).into_response())
}

/// A JSON body, with a clear error when it is not UTF-8 or not the expected JSON.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not UTF-8 text: {e}")))?;
    serde_json::from_str(text).map_err(|e| {
        ApiError::BadRequest(format!("the request body is not the expected JSON: {e}"))
    })
}

fn parse_latent(text: &str) -> Result<usize, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest(format!("`{text}` is not a latent index")))
}

/// Runs model work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(format!("the request failed: {e}")))?
}

async fn info(State(explorer): State<Shared>) -> ApiAnswer {
    json(explorer.info())
}

#[derive(Deserialize)]
struct TextBody {
    text: String,
}

#[derive(Deserialize)]
struct ActivationsBody {
    text: String,
    #[serde(default)]
    hide_ultra_dense: bool,
}

async fn activations(
    State(explorer): State<Shared>,
    Path(sae): Path<String>,
    body: Bytes,
) -> ApiAnswer {
    let request: ActivationsBody = parse_body(&body)?;
    json(
        blocking(move || explorer.activations(&sae, &request.text, request.hide_ultra_dense))
            .await?,
    )
}

async fn search(
    State(explorer): State<Shared>,
    Path(sae): Path<String>,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiAnswer {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    json(explorer.search(&sae, &query)?)
}

async fn latent(
    State(explorer): State<Shared>,
    Path((sae, latent)): Path<(String, String)>,
) -> ApiAnswer {
    json(explorer.latent(&sae, parse_latent(&latent)?)?)
}

async fn set_label(
    State(explorer): State<Shared>,
    Path((sae, latent)): Path<(String, String)>,
    body: Bytes,
) -> ApiAnswer {
    let latent = parse_latent(&latent)?;
    let TextBody { text } = parse_body(&body)?;
    json(blocking(move || explorer.set_label(&sae, latent, &text)).await?)
}

#[derive(Deserialize)]
struct SteerBody {
    prompt: String,
    strength: f32,
    max_new_tokens: Option<usize>,
}

async fn steer(
    State(explorer): State<Shared>,
    Path((sae, latent)): Path<(String, String)>,
    body: Bytes,
) -> ApiAnswer {
    let latent = parse_latent(&latent)?;
    let request: SteerBody = parse_body(&body)?;
    let tokens = request.max_new_tokens.unwrap_or(DEFAULT_NEW_TOKENS);
    json(
        blocking(move || explorer.steer(&sae, latent, &request.prompt, request.strength, tokens))
            .await?,
    )
}

//! A renderer behind an HTTP endpoint: how a deployment uses a rendering service elsewhere.
//!
//! `POST {url}` with the job's input snapshot as the JSON body (and `X-Creditgraph-Job-Id`); a
//! 2xx answer's body is the artifact, typed by its `Content-Type`. The status decides what a
//! failure means: 429 and 5xx (and a connection that could not be made) are transient, worth
//! another attempt; any other status is permanent. A JSON error body may name the job error code
//! (`{"code": "tts_provider_down"}`). The whole call has one deadline (a timeout is a permanent
//! `render_resource_limit`, as for a command), the answer is read bounded, and redirects are not
//! followed (a POST must not silently become a GET elsewhere).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;

use super::{ProgressSink, RenderFailure, Rendered, Renderer};
use crate::code::JobErrorCode;

/// Characters of an error body kept in a failure's detail.
const ERROR_BODY_CHARS_MAX: usize = 300;
/// Bytes of an error body read at all.
const ERROR_BODY_BYTES_MAX: usize = 8 * 1024;
const CONNECT_TIMEOUT_SECONDS: u64 = 10;

/// Renders by calling `url`.
#[derive(Clone, Debug)]
pub struct HttpRenderer {
    url: reqwest::Url,
    timeout_seconds: u64,
    artifact_bytes_max: usize,
    client: reqwest::Client,
}

impl HttpRenderer {
    pub fn new(url: &str, timeout_seconds: u64, artifact_bytes_max: usize) -> Result<HttpRenderer, String> {
        let url = reqwest::Url::parse(url).map_err(|error| format!("the renderer URL {url:?} is invalid: {error}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("the renderer URL must be http or https, not {}", url.scheme()));
        }
        if timeout_seconds == 0 {
            return Err("the renderer timeout must be at least 1 second".to_owned());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(CONNECT_TIMEOUT_SECONDS.min(timeout_seconds)))
            .timeout(Duration::from_secs(timeout_seconds))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("creditgraph/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| format!("cannot build the renderer's HTTP client: {error}"))?;
        Ok(HttpRenderer { url, timeout_seconds, artifact_bytes_max, client })
    }

    fn transport_failure(&self, error: &reqwest::Error) -> RenderFailure {
        if error.is_timeout() {
            return failure(
                false,
                JobErrorCode::RenderResourceLimit,
                format!("the renderer did not answer within {} seconds", self.timeout_seconds),
            );
        }
        // Could not connect, connection reset, a broken answer: the service may be back soon.
        failure(true, JobErrorCode::Unknown, format!("the renderer could not be reached: {}", error_chain(error)))
    }
}

fn failure(transient: bool, code: JobErrorCode, detail: impl Into<String>) -> RenderFailure {
    RenderFailure { transient, code, stage: "render".to_owned(), detail: detail.into() }
}

/// The error and its sources, which carry the useful part ("connection refused").
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads the body, failing once it holds more than `bytes_max`.
async fn read_bounded(
    response: &mut reqwest::Response,
    bytes_max: usize,
) -> Result<Result<Vec<u8>, ()>, reqwest::Error> {
    if response.content_length().is_some_and(|length| length > bytes_max as u64) {
        return Ok(Err(()));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if bytes.len() + chunk.len() > bytes_max {
            return Ok(Err(()));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Ok(bytes))
}

#[async_trait]
impl Renderer for HttpRenderer {
    async fn render(&self, job_id: &str, input: &str, progress: &dyn ProgressSink) -> Result<Rendered, RenderFailure> {
        progress.progress("render", 1);
        let mut response = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("x-creditgraph-job-id", job_id)
            .body(input.to_owned())
            .send()
            .await
            .map_err(|error| self.transport_failure(&error))?;
        let status = response.status();
        if status.is_success() {
            progress.progress("compose", 90);
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
                .filter(|value| !value.is_empty() && value.len() <= 255)
                .unwrap_or("application/octet-stream")
                .to_owned();
            let bytes = match read_bounded(&mut response, self.artifact_bytes_max).await {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(())) => {
                    return Err(failure(
                        false,
                        JobErrorCode::RenderResourceLimit,
                        format!("the renderer answered more than {} bytes", self.artifact_bytes_max),
                    ))
                }
                Err(error) => return Err(self.transport_failure(&error)),
            };
            if bytes.is_empty() {
                return Err(failure(false, JobErrorCode::RenderUnrecoverable, "the renderer answered an empty body"));
            }
            progress.progress("compose", 100);
            return Ok(Rendered { bytes, content_type });
        }
        let body = match read_bounded(&mut response, ERROR_BODY_BYTES_MAX).await {
            Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            _ => String::new(),
        };
        let named = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|json| json.get("code").and_then(|code| code.as_str()).and_then(JobErrorCode::parse));
        let transient = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        let code = named.unwrap_or(if transient { JobErrorCode::Unknown } else { JobErrorCode::RenderUnrecoverable });
        let excerpt: String = body.trim().chars().take(ERROR_BODY_CHARS_MAX).collect();
        let detail = if excerpt.is_empty() {
            format!("the renderer answered {}", status.as_u16())
        } else {
            format!("the renderer answered {}: {excerpt}", status.as_u16())
        };
        Err(failure(transient, code, detail))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode as AxumStatus};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use axum::Router;

    use super::*;

    struct Nothing;

    impl ProgressSink for Nothing {
        fn progress(&self, _stage: &str, _percent: u8) {}
    }

    /// What the fake renderer saw: (job id header, body).
    type Seen = Arc<Mutex<Vec<(String, String)>>>;

    async fn answer(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> Response {
        let job_id = headers.get("x-creditgraph-job-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let body = String::from_utf8_lossy(&body).into_owned();
        seen.lock().expect("seen lock").push((job_id.clone(), body.clone()));
        match job_id.as_str() {
            "ok" => ([("content-type", "video/webm")], format!("VIDEO<{body}>")).into_response(),
            "busy" => (AxumStatus::TOO_MANY_REQUESTS, "slow down").into_response(),
            "down" => (AxumStatus::BAD_GATEWAY, r#"{"code":"tts_provider_down"}"#).into_response(),
            "bad" => (AxumStatus::UNPROCESSABLE_ENTITY, "cannot render this").into_response(),
            "moved" => (AxumStatus::FOUND, [("location", "/elsewhere")]).into_response(),
            "huge" => vec![b'x'; 4096].into_response(),
            "slow" => {
                // The double answers later than the renderer's deadline, on purpose.
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late".into_response()
            }
            _ => AxumStatus::NOT_FOUND.into_response(),
        }
    }

    async fn fake_renderer() -> (SocketAddr, Seen) {
        let seen: Seen = Arc::default();
        let app = Router::new().route("/render", post(answer)).with_state(Arc::clone(&seen));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (address, seen)
    }

    async fn render(address: SocketAddr, job_id: &str) -> Result<Rendered, RenderFailure> {
        let renderer = HttpRenderer::new(&format!("http://{address}/render"), 1, 1024).expect("valid renderer");
        renderer.render(job_id, r#"{"problem":"p"}"#, &Nothing).await
    }

    #[tokio::test]
    async fn a_2xx_body_is_the_artifact_typed_by_its_header() {
        let (address, seen) = fake_renderer().await;
        let rendered = render(address, "ok").await.expect("renders");
        assert_eq!(rendered.content_type, "video/webm");
        assert_eq!(rendered.bytes, br#"VIDEO<{"problem":"p"}>"#);
        assert_eq!(seen.lock().expect("seen").as_slice(), [("ok".to_owned(), r#"{"problem":"p"}"#.to_owned())]);
    }

    #[tokio::test]
    async fn statuses_decide_transient_or_permanent() {
        let (address, _) = fake_renderer().await;
        let busy = render(address, "busy").await.expect_err("429");
        assert_eq!((busy.transient, busy.code), (true, JobErrorCode::Unknown), "{busy:?}");
        assert!(busy.detail.contains("429") && busy.detail.contains("slow down"), "{busy:?}");
        let down = render(address, "down").await.expect_err("502");
        assert_eq!((down.transient, down.code), (true, JobErrorCode::TtsProviderDown), "{down:?}");
        let bad = render(address, "bad").await.expect_err("422");
        assert_eq!((bad.transient, bad.code), (false, JobErrorCode::RenderUnrecoverable), "{bad:?}");
        let moved = render(address, "moved").await.expect_err("302 is not followed");
        assert_eq!((moved.transient, moved.code), (false, JobErrorCode::RenderUnrecoverable), "{moved:?}");
        let huge = render(address, "huge").await.expect_err("over the bound");
        assert_eq!((huge.transient, huge.code), (false, JobErrorCode::RenderResourceLimit), "{huge:?}");
    }

    #[tokio::test]
    async fn a_timeout_is_a_resource_limit_and_a_refused_connection_is_transient() {
        let (address, _) = fake_renderer().await;
        let slow = render(address, "slow").await.expect_err("times out");
        assert_eq!((slow.transient, slow.code), (false, JobErrorCode::RenderResourceLimit), "{slow:?}");

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = closed.local_addr().expect("address");
        drop(closed);
        let refused = render(address, "ok").await.expect_err("nothing listens");
        assert_eq!((refused.transient, refused.code), (true, JobErrorCode::Unknown), "{refused:?}");
    }

    #[test]
    fn the_url_must_be_http() {
        assert!(HttpRenderer::new("ftp://host/render", 5, 1).is_err());
        assert!(HttpRenderer::new("not a url", 5, 1).is_err());
        assert!(HttpRenderer::new("http://host/render", 0, 1).is_err());
    }
}

//! A small SSE reader over a real socket, for the solve tests.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::helpers::{TestApp, SERVICE_TOKEN};

/// One frame as a client sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub event: String,
    pub id: String,
    pub data: Value,
}

impl Frame {
    pub fn payload(&self) -> &Value {
        &self.data["payload"]
    }
}

/// An open event stream.
pub struct EventStream {
    pub run_id: String,
    pub thread_id: String,
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl EventStream {
    /// The next frame, or `None` at the end of the stream. Panics after 30 s of silence.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        event = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("id:") {
                        id = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if event.is_empty() && data.is_empty() {
                    continue; // a keep-alive comment
                }
                let data = serde_json::from_str(&data).expect("frame data is JSON");
                return Some(Frame { event, id, data });
            }
            let chunk =
                tokio::time::timeout(Duration::from_secs(30), self.body.next()).await.expect("the stream stalled");
            match chunk {
                Some(Ok(bytes)) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Some(Err(error)) => panic!("stream broke: {error}"),
                None => return None,
            }
        }
    }

    /// Every remaining frame.
    pub async fn collect(mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next().await {
            frames.push(frame);
        }
        frames
    }

    /// Reads until a frame of `event` arrives; returns the frames read.
    pub async fn until(&mut self, event: &str) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next().await {
            let done = frame.event == event;
            frames.push(frame);
            if done {
                return frames;
            }
        }
        panic!("the stream ended before `{event}`: {frames:#?}");
    }
}

/// The event stream of a `text/event-stream` answer.
pub fn open(response: reqwest::Response) -> EventStream {
    let header =
        |name: &str| response.headers().get(name).and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned();
    let (run_id, thread_id) = (header("x-run-id"), header("x-thread-id"));
    assert!(header("content-type").starts_with("text/event-stream"), "{response:?}");
    EventStream { run_id, thread_id, body: response.bytes_stream().boxed(), buffer: String::new() }
}

impl TestApp {
    /// `POST /v1/solve`; panics unless the answer is an event stream.
    pub async fn solve(&self, body: Value) -> EventStream {
        let response = self.solve_raw(body).await;
        assert_eq!(response.status(), 200, "{response:?}");
        open(response)
    }

    pub async fn solve_raw(&self, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/solve", self.address))
            .bearer_auth(SERVICE_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("solve request")
    }

    /// `GET /v1/runs/{id}/events`, resuming after `last_event_id`.
    pub async fn resume(&self, run_id: &str, last_event_id: Option<&str>) -> EventStream {
        let mut request =
            self.client.get(format!("{}/v1/runs/{run_id}/events", self.address)).bearer_auth(SERVICE_TOKEN);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("events request");
        assert_eq!(response.status(), 200, "{response:?}");
        open(response)
    }
}

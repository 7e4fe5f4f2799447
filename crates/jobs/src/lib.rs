//! Durable video jobs: the state machine that keeps a job's credits exact, the renderers that
//! make its artifact, and the workers that run them — in the server process or in other
//! processes over the worker HTTP protocol.
//!
//! Why a crate of its own: a job outlives the turn that created it and is run by processes that
//! have no run engine (a `creditgraph worker` holds nothing but a lease), so the job system must
//! stand without the engine; the engine creates jobs and follows them, never the other way.
//!
//! Layout, in dependency order (no module depends on one after it): [`code`] (the closed set of
//! error codes), [`render`] (the renderer port: built-in SVG storyboard, command, HTTP),
//! [`service`] (the state machine [`JobService`]), [`worker`] (the worker loop and
//! [`worker::WorkerBackend`]), [`remote`] (the worker protocol's client, for other processes).

pub mod code;
pub mod remote;
pub mod render;
pub mod service;
pub mod worker;

pub use code::JobErrorCode;
pub use service::{Finish, JobError, JobService, JobsConfig, NewJob};

//! Webhooks of creditgraph: the dispatcher that delivers the event outbox to endpoints
//! (`dispatcher`, through the store's delivery protocol in `store::webhooks`), where a webhook
//! may be sent (`destination`: no loopback or private networks unless allowed), and the
//! signatures of the Standard Webhooks specification (<https://www.standardwebhooks.com>), so
//! that every receiver can check a delivery with the specification's own libraries
//! (`standardwebhooks` on PyPI, `svix`, …) instead of code we invent.

pub mod destination;
pub mod dispatcher;
pub mod signature;

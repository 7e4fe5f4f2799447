//! Webhooks of creditgraph. Today: where a webhook may be sent (`destination`: no loopback or
//! private networks unless allowed), and the signatures of the Standard Webhooks specification
//! (<https://www.standardwebhooks.com>), so that every receiver can check a delivery with the
//! specification's own libraries (`standardwebhooks` on PyPI, `svix`, …) instead of code we
//! invent. The outbox dispatcher that delivers events lands here next (see
//! `docs/dev/plan-allowances-webhooks.md`).

pub mod destination;
pub mod signature;

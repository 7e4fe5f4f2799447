//! Webhooks of creditgraph. Today: the signatures of the Standard Webhooks specification
//! (<https://www.standardwebhooks.com>), so that every receiver can check a delivery with the
//! specification's own libraries (`standardwebhooks` on PyPI, `svix`, …) instead of code we
//! invent. The outbox dispatcher that delivers events lands here next (see
//! `docs/dev/plan-allowances-webhooks.md`).

pub mod signature;

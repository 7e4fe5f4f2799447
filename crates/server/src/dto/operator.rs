//! The shapes of the operator's lists: accounts, an account's runs and jobs, the overview.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::jobs::JobResponse;
use super::runs::RunResponse;
use super::{AccountResponse, GrantResponse};

/// `GET /v1/accounts`
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AccountsQuery {
    /// Only accounts whose id starts with this (characters of an id: `[A-Za-z0-9._-]`).
    pub prefix: Option<String>,
    /// Page size: 1 to 1000, 50 when absent.
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
}

/// One page of accounts, in id order (byte-wise).
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountsResponse {
    pub accounts: Vec<AccountResponse>,
    /// Pass as `after` for the next page; null at the end.
    pub next: Option<String>,
}

/// `GET /v1/accounts/{account_id}/runs` and `…/jobs`
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NewestFirstQuery {
    /// Page size: 1 to 1000, 20 when absent.
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
}

/// One page of an account's runs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountRunsResponse {
    pub runs: Vec<RunResponse>,
    /// Pass as `after` for the next (older) page; null at the end.
    pub next: Option<String>,
}

/// One page of an account's video jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountJobsResponse {
    pub jobs: Vec<JobResponse>,
    /// Pass as `after` for the next (older) page; null at the end.
    pub next: Option<String>,
}

/// `GET /v1/overview`
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OverviewQuery {
    /// UTC days to cover, today included: 1 to 90, 30 when absent.
    pub days: Option<u32>,
}

/// What the journal moved on one UTC day, every account together.
#[derive(Debug, Serialize, ToSchema)]
pub struct OverviewDay {
    #[schema(example = "2026-12-02")]
    pub day: String,
    /// Credits granted (grants and allowance periods; refunds are apart).
    pub granted: String,
    /// Credits charged: captures from holds and debits.
    pub captured: String,
    pub refunded: String,
}

/// The whole service at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct OverviewResponse {
    /// Pending holds in the store now (past-expiry ones the sweeper has not reached included).
    pub pending_holds: u64,
    /// What they hold.
    pub held: String,
    /// One per UTC day of the window, oldest first, days without entries included.
    pub days: Vec<OverviewDay>,
}

/// Which grants `GET /v1/accounts/{account_id}/grants` lists, as they read now.
#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GrantStateQuery {
    /// Neither voided nor past their expiry (spent ones included).
    #[default]
    Active,
    Expired,
    Voided,
}

/// `GET /v1/accounts/{account_id}/grants`
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GrantsQuery {
    /// active (default) | expired | voided
    #[param(inline)]
    pub state: Option<GrantStateQuery>,
    /// Page size: 1 to 1000, 100 when absent.
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
}

/// One page of an account's grants in one state, in grant-id order.
#[derive(Debug, Serialize, ToSchema)]
pub struct GrantsResponse {
    pub grants: Vec<GrantResponse>,
    /// Pass as `after` for the next page; null at the end.
    pub next: Option<String>,
}

/// `POST /v1/grants/{grant_id}/void` (the body is optional and has no fields).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidGrantRequest {}

/// A grant as voided, and what the void took back from the balance.
#[derive(Debug, Serialize, ToSchema)]
pub struct VoidGrantResponse {
    pub grant: GrantResponse,
    #[schema(example = "6")]
    pub voided: String,
}

//! The shapes of the operator's lists: accounts, an account's runs and jobs, the overview.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::jobs::JobResponse;
use super::runs::RunResponse;
use super::AccountResponse;

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

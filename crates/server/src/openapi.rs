//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` and the DTOs, so it
//! cannot drift from the code.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    accounts, allowances, api_keys, gateway, health, holds, jobs, ledger_events, operator, prometheus, runs,
    test_clock, webhooks, worker,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "creditgraph", description = "Prepaid credits: grants, holds, captures, journal."),
    paths(
        accounts::create_grant,
        accounts::get_account,
        accounts::list_entries,
        accounts::list_holds,
        accounts::create_debit,
        accounts::create_refund,
        accounts::set_low_balance_threshold,
        allowances::create_allowance,
        allowances::list_allowances,
        allowances::end_allowance,
        allowances::create_plan,
        allowances::list_plans,
        allowances::get_plan,
        allowances::subscribe_plan,
        ledger_events::list_events,
        api_keys::create_key,
        api_keys::list_keys,
        api_keys::revoke_key,
        api_keys::usage,
        gateway::chat_completions,
        gateway::list_models,
        webhooks::create_endpoint,
        webhooks::list_endpoints,
        webhooks::get_endpoint,
        webhooks::disable_endpoint,
        webhooks::enable_endpoint,
        webhooks::rotate_secret,
        webhooks::replay,
        holds::create_hold,
        holds::get_hold,
        holds::capture,
        holds::release,
        holds::extend,
        runs::estimate,
        runs::solve,
        runs::get_run,
        runs::run_events,
        runs::cancel_run,
        runs::get_artifact,
        runs::get_thread,
        jobs::get_job,
        jobs::cancel_job,
        jobs::thread_jobs,
        worker::claim,
        worker::heartbeat,
        worker::finish,
        test_clock::get_test_clock,
        test_clock::advance_test_clock,
        health::healthz,
        health::readyz,
        health::openapi,
        prometheus::metrics,
        operator::list_accounts,
        operator::list_grants,
        operator::void_grant,
        operator::account_runs,
        operator::account_jobs,
        operator::overview,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Declares the `bearer` scheme the paths refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

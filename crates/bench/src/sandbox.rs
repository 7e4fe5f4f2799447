//! The `code_execute` sandbox's cost: the same small program run through the bubblewrap
//! sandbox (the default executor) and through the local executor (limits only, no boundary:
//! what a team runs without one), one after the other, so the boundary's price per call shows
//! beside what a user would otherwise use.

use std::time::Instant;

use anyhow::Context;
use engine::sandbox::bwrap::{Bubblewrap, BubblewrapSettings};
use engine::sandbox::local::LocalPython;
use engine::sandbox::{CodeExecutor, ExecLimits, ExecStatus};
use serde::Serialize;

use crate::measure::{Latencies, LatencySummary};

/// What every run executes: small, so the figure is the executor's own cost.
const PROGRAM: &str = "print(sum(range(1000)))";

#[derive(Clone, Debug, Serialize)]
pub struct SandboxCost {
    pub runs: usize,
    pub bubblewrap: LatencySummary,
    pub local: LatencySummary,
}

/// Runs [`PROGRAM`] `runs` times through each executor, alternating, and checks every answer.
pub async fn measure(runs: usize) -> anyhow::Result<SandboxCost> {
    let limits = ExecLimits::default();
    let bubblewrap = Bubblewrap::detect(limits.clone(), &BubblewrapSettings::default())
        .context("the bubblewrap sandbox is unavailable (apt-get install bubblewrap)")?;
    let local = LocalPython::detect(limits).context("no local python3")?;
    let executors: [&dyn CodeExecutor; 2] = [&bubblewrap, &local];
    let mut latencies = [Latencies::new(), Latencies::new()];
    for _ in 0..runs {
        for (index, executor) in executors.iter().enumerate() {
            let started = Instant::now();
            let output = executor.execute(PROGRAM).await.context("the sandbox ran nothing")?;
            latencies[index].record(started.elapsed());
            anyhow::ensure!(
                output.status == ExecStatus::Succeeded && output.stdout.trim() == "499500",
                "the program did not answer as expected: {output:?}"
            );
        }
    }
    Ok(SandboxCost { runs, bubblewrap: latencies[0].summary(), local: latencies[1].summary() })
}

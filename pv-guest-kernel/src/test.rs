//! A tiny test reporter for scenario guests: one `ok <step>` or
//! `FAIL <step>: why` line per step, then one `Test result: ...` line and a
//! shutdown. xtask judges scenarios by these lines.

use crate::println;

/// The overall verdict.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// Every step passed.
    Success,
    /// Nothing was tested (no step ran).
    Skip,
    /// The test could not run properly.
    Error,
    /// At least one step failed.
    Failure,
}

/// Collects step results.
pub struct Reporter {
    failed: usize,
    passed: usize,
}

impl Default for Reporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter {
    /// A reporter with no steps yet.
    pub const fn new() -> Self {
        Self {
            failed: 0,
            passed: 0,
        }
    }

    /// Records a step that passed.
    pub fn ok(&mut self, step: &str) {
        self.passed += 1;
        println!("ok {step}");
    }

    /// Records a step that failed, and why.
    pub fn fail(&mut self, step: &str, why: core::fmt::Arguments) {
        self.failed += 1;
        println!("FAIL {step}: {why}");
    }

    /// Records `cond` as a step: ok if true, else FAIL with `why`.
    pub fn check(&mut self, step: &str, cond: bool, why: core::fmt::Arguments) {
        if cond {
            self.ok(step)
        } else {
            self.fail(step, why)
        }
    }

    /// The verdict so far.
    pub fn verdict(&self) -> Verdict {
        if self.failed > 0 {
            Verdict::Failure
        } else if self.passed == 0 {
            Verdict::Skip
        } else {
            Verdict::Success
        }
    }

    /// Prints the final verdict line and powers the domain off.
    pub fn finish(self) -> ! {
        self.print_verdict();
        crate::rt::shutdown(guest_abi::sched::ShutdownReason::Poweroff)
    }

    /// Prints the final verdict line (for a domain that must live on after
    /// its checks, e.g. until another domain ends it).
    pub fn print_verdict(&self) {
        let v = self.verdict();
        let word = match v {
            Verdict::Success => "SUCCESS",
            Verdict::Skip => "SKIP",
            Verdict::Error => "ERROR",
            Verdict::Failure => "FAILURE",
        };
        println!("Test result: {word}");
    }
}

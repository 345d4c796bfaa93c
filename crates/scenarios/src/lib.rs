//! The seed's examples as scenarios run against real servers in one process: vigil-cloud, the
//! logger's pipeline into the store, and the monitor with its rollout controller, review API
//! and alarms ([`Stack`]), on models built by the project's training recipes ([`Recipes`]).
//! `vigil demo NAME` runs them for a person to watch; the tests run them on Postgres and check
//! every outcome.
//!
//! - [`phone_line`]: the next scratch-detector version from shadow beside the human inspectors to
//!   the whole line on vigil-edge; a badly normalising one rolled back in its shadow step.
//! - [`anti_spam`]: a retrained spam filter rolled out from 1% of users to all by the controller,
//!   then a version that flags every post rolled back by itself.
//! - [`screening`]: a symptom-screening classifier in partial automation, hard cases decided by a
//!   panel of three doctors; automation rate and agreement reported.
//! - [`pipeline`]: a user-profile model feeding a recommender; a lost clickstream fires the
//!   unknown-fraction alarm on the first stage and the click-through alarm on the second.
//! - [`retraining`]: the loop closed: the screening classifier's patients change, its accuracy
//!   alarm retrains it by itself, and the candidate is rolled out from shadow and promoted.
//! - [`line_loop`]: the loop closed on the phone line: the light dims, the drift alarm raises the
//!   edge's capture rate, the inspectors' decisions fire the accuracy alarm, and the scratch
//!   detector fine-tuned on the captured images is rolled out from shadow and promoted.

pub mod anti_spam;
pub mod line_loop;
pub mod loops;
pub mod phone_line;
pub mod pipeline;
pub mod recipes;
pub mod retraining;
pub mod rollouts;
pub mod screening;
pub mod stack;

pub use recipes::Recipes;
pub use stack::{ServerKind, Stack, StackOptions};

/// Where a scenario reports what it is doing, one line at a time.
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// A progress sink that drops every line (tests).
pub fn quiet(_: &str) {}

//! Cluster operations (restart, upgrade, deploy) rolled across a cluster's
//! hosts. This module holds the planner and the service ([`service`]) that
//! carries its decisions out.
//!
//! # The planner ([`plan`])
//!
//! A pure state machine: no IO, no async, no clock (the caller passes the
//! time in milliseconds), so every rule is tested without waiting.
//!
//! - [`plan::OpState`] is the operation's durable progress: the hosts in
//!   hostset order, each `Pending`, `InProcess { attempt, since_ms }`, `Done`
//!   or `Failed { reason }`, the phase (`Running`, `Paused`, `Aborting`,
//!   `Finished`, `Failed { host, reason }`, `Aborted`), the end of the soak
//!   under way, whether the health gate passed, and counters.
//! - [`plan::next`] decides what to do: start the next hosts, soak, check
//!   health, wait for hosts in process, end the operation (finish, fail, end
//!   aborted) or nothing (paused or ended).
//! - [`plan::commit`] records a decision as it is carried out. For `Start` it
//!   marks the hosts in process *before* they are touched: written to the
//!   store first, it means a successor never starts them again.
//! - [`plan::apply`] folds in an observation: a host succeeded, failed or
//!   timed out, the health gate passed or failed, pause, resume, abort,
//!   retry of the failed hosts, and ticks of the clock (which time out hosts
//!   in process longer than the per-host timeout). An observation that does
//!   not fit the state is a typed [`plan::PlanError`].
//!
//! # Knobs ([`plan::Knobs`])
//!
//! All optional; the defaults are the original's behaviour: one host at a
//! time, in hostset order, stopping at the first failure. `batch` is a count
//! or a percentage of the cluster (rounded up, at least one host),
//! `failure_budget` the number of host failures tolerated, `soak_seconds` a
//! pause between batches, `host_timeout_seconds` (600) the time one host may
//! take, `health_gate` a health check between batches.
//!
//! # Invariants
//!
//! - Batches follow one another: hosts start only when none is in process,
//!   so at most [`plan::batch_size`] hosts are ever in process, and they are
//!   the first pending hosts in hostset order.
//! - A host starts once; only `RetryFailed` (allowed once the operation
//!   ended `Failed`, or `Finished` with failed hosts) puts the failed hosts,
//!   and only those, back to pending.
//! - The soak and the health gate come between batches only: not before the
//!   first, not after the last.
//! - A failure that exceeds the budget (or a failed health gate) stops new
//!   starts at once; the hosts of the batch in flight finish, then the
//!   operation ends `Failed`, naming the host whose failure exceeded the
//!   budget (no host for the gate). Hosts after it stay untouched.
//! - `Pause` starts nothing new until `Resume`; hosts in process finish and
//!   their outcomes are recorded. A failing operation still ends `Failed`
//!   while paused, so no record stays in process after its work stopped.
//! - `Abort` starts nothing new; once the hosts in process finished the
//!   operation ends `Aborted`.
//! - An operation that ran every host with failures within the budget ends
//!   `Finished`; its failed hosts stay recorded as `Failed`.
//! - Every run terminates: each decision either starts a host, ends one, or
//!   ends a soak, a gate or the operation, so a driver that carries decisions
//!   out reaches an ended phase in a number of steps linear in the hosts.

mod drive;
pub mod nodes;
pub mod plan;
pub mod service;
mod takeover;

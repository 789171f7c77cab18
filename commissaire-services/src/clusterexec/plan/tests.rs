use std::collections::HashMap;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::json;

use super::*;

fn knobs(value: serde_json::Value) -> Knobs {
    let knobs: Knobs = serde_json::from_value(value).expect("knobs deserialize");
    knobs.validate().expect("valid knobs");
    knobs
}

fn hosts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("h{i}")).collect()
}

fn start(state: &OpState, knobs: &Knobs, now: u64) -> (Vec<String>, OpState) {
    let decision = next(state, knobs, now);
    let Decision::Start { hosts } = &decision else { panic!("expected a start, got {decision:?}") };
    (hosts.clone(), commit(state, knobs, &decision, now).expect("commit start"))
}

fn observe(state: &OpState, knobs: &Knobs, observation: Observation) -> OpState {
    apply(state, knobs, &observation).expect("observation applies")
}

fn ok(host: &str) -> Observation {
    Observation::HostSucceeded { host: host.to_string() }
}

fn failed(host: &str) -> Observation {
    Observation::HostFailed { host: host.to_string(), reason: "boom".to_string() }
}

#[test]
fn knobs_default_to_the_original() {
    let knobs = knobs(json!({}));
    assert_eq!(knobs, Knobs::default());
    assert_eq!(knobs.batch, Batch::Count(1));
    assert_eq!((knobs.failure_budget, knobs.soak_seconds, knobs.host_timeout_seconds), (0, 0, 600));
    assert!(!knobs.health_gate);
    let parsed = self::knobs(json!({"batch": "25%", "failure_budget": 2, "health_gate": true, "other": 1}));
    assert_eq!(parsed.batch, Batch::Percent("25%".to_string()));
    let text = serde_json::to_value(&parsed).expect("serialize");
    assert_eq!(text["batch"], json!("25%"));
    assert_eq!(serde_json::from_value::<Knobs>(text).expect("round trip"), parsed);
}

#[test]
fn bad_knobs_name_their_field() {
    for (body, field) in [
        (json!({"batch": 0}), "batch"),
        (json!({"batch": -3}), "batch"),
        (json!({"batch": "0%"}), "batch"),
        (json!({"batch": "150%"}), "batch"),
        (json!({"batch": "x%"}), "batch"),
        (json!({"batch": "25"}), "batch"),
        (json!({"batch": "%"}), "batch"),
        (json!({"batch": "-5%"}), "batch"),
        (json!({"batch": "2.5%"}), "batch"),
        (json!({"failure_budget": -1}), "failure_budget"),
        (json!({"soak_seconds": -1}), "soak_seconds"),
        (json!({"soak_seconds": 86_401}), "soak_seconds"),
        (json!({"host_timeout_seconds": 0}), "host_timeout_seconds"),
        (json!({"host_timeout_seconds": -600}), "host_timeout_seconds"),
    ] {
        let knobs: Knobs = serde_json::from_value(body.clone()).expect("deserialize");
        let error = knobs.validate().expect_err("refused");
        assert_eq!(error.field(), field, "{body}");
        assert!(error.to_string().starts_with(field), "{error}");
    }
}

#[test]
fn batch_sizes() {
    let with = |batch: serde_json::Value| knobs(json!({ "batch": batch }));
    assert_eq!(batch_size(&Knobs::default(), 5), 1);
    assert_eq!(batch_size(&with(json!(2)), 5), 2);
    assert_eq!(batch_size(&with(json!(9)), 5), 5);
    assert_eq!(batch_size(&with(json!("25%")), 10), 3);
    assert_eq!(batch_size(&with(json!("25%")), 8), 2);
    assert_eq!(batch_size(&with(json!("1%")), 3), 1);
    assert_eq!(batch_size(&with(json!("100%")), 7), 7);
    assert_eq!(batch_size(&with(json!("50%")), 0), 1);
}

#[test]
fn defaults_one_at_a_time_in_order_and_stop_at_the_first_failure() {
    let knobs = Knobs::default();
    let mut state = OpState::new(["a", "b", "c"]).expect("state");
    let (started, next_state) = start(&state, &knobs, 0);
    assert_eq!(started, ["a"]);
    state = next_state;
    assert_eq!(state.host("a").map(|e| e.state.clone()), Some(HostState::InProcess { attempt: 1, since_ms: 0 }));
    assert_eq!(next(&state, &knobs, 1), Decision::Wait);
    state = observe(&state, &knobs, ok("a"));
    let (started, next_state) = start(&state, &knobs, 2);
    assert_eq!(started, ["b"]);
    state = observe(&next_state, &knobs, failed("b"));
    let decision = next(&state, &knobs, 3);
    assert_eq!(decision, Decision::Fail { host: Some("b".to_string()), reason: "boom".to_string() });
    state = commit(&state, &knobs, &decision, 3).expect("commit fail");
    assert_eq!(state.phase, Phase::Failed { host: Some("b".to_string()), reason: "boom".to_string() });
    assert_eq!(state.host("c").map(|e| (e.state.clone(), e.attempts)), Some((HostState::Pending, 0)));
    assert_eq!(next(&state, &knobs, 4), Decision::Idle);
}

#[test]
fn a_failure_mid_batch_lets_the_batch_finish_and_starts_nothing_new() {
    let knobs = knobs(json!({"batch": 3}));
    let state = OpState::new(hosts(6)).expect("state");
    let (started, state) = start(&state, &knobs, 0);
    assert_eq!(started, ["h0", "h1", "h2"]);
    let state = observe(&state, &knobs, failed("h1"));
    assert_eq!(next(&state, &knobs, 1), Decision::Wait);
    let state = observe(&state, &knobs, ok("h0"));
    let state = observe(&state, &knobs, Observation::HostTimedOut { host: "h2".to_string() });
    assert_eq!(
        state.host("h2").map(|e| e.state.clone()),
        Some(HostState::Failed { reason: "timed out after 600 s".into() })
    );
    let decision = next(&state, &knobs, 2);
    assert_eq!(decision, Decision::Fail { host: Some("h1".to_string()), reason: "boom".to_string() });
    let state = commit(&state, &knobs, &decision, 2).expect("commit");
    assert!(state.hosts[3..].iter().all(|e| e.attempts == 0));
}

#[test]
fn percentages_batch_the_cluster() {
    let knobs = knobs(json!({"batch": "40%"}));
    let mut state = OpState::new(hosts(5)).expect("state");
    let mut batches = Vec::new();
    loop {
        match next(&state, &knobs, 0) {
            Decision::Start { hosts } => {
                state = commit(&state, &knobs, &Decision::Start { hosts: hosts.clone() }, 0).expect("commit");
                for host in &hosts {
                    state = observe(&state, &knobs, ok(host));
                }
                batches.push(hosts);
            }
            Decision::Finish => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(batches, [vec!["h0", "h1"], vec!["h2", "h3"], vec!["h4"]]);
}

#[test]
fn a_budget_tolerates_failures_then_fails() {
    let knobs = knobs(json!({"failure_budget": 1}));
    let mut state = OpState::new(hosts(4)).expect("state");
    let (_, s) = start(&state, &knobs, 0);
    state = observe(&s, &knobs, failed("h0"));
    let (started, s) = start(&state, &knobs, 0);
    assert_eq!(started, ["h1"]);
    state = observe(&s, &knobs, ok("h1"));
    let (_, s) = start(&state, &knobs, 0);
    state = observe(&s, &knobs, failed("h2"));
    assert_eq!(next(&state, &knobs, 0), Decision::Fail { host: Some("h2".into()), reason: "boom".into() });

    // Within the budget the operation finishes, the failure recorded.
    let mut state = OpState::new(hosts(2)).expect("state");
    let (_, s) = start(&state, &knobs, 0);
    state = observe(&s, &knobs, failed("h0"));
    let (_, s) = start(&state, &knobs, 0);
    state = observe(&s, &knobs, ok("h1"));
    assert_eq!(next(&state, &knobs, 0), Decision::Finish);
    let state = commit(&state, &knobs, &Decision::Finish, 0).expect("commit");
    assert_eq!((state.phase.clone(), state.done(), state.failed()), (Phase::Finished, 1, 1));
}

#[test]
fn pause_and_resume() {
    let knobs = knobs(json!({"batch": 2}));
    let (_, state) = start(&OpState::new(hosts(4)).expect("state"), &knobs, 0);
    let state = observe(&state, &knobs, Observation::Pause);
    assert_eq!(next(&state, &knobs, 1), Decision::Idle);
    let state = observe(&state, &knobs, ok("h0"));
    let state = observe(&state, &knobs, ok("h1"));
    assert_eq!(next(&state, &knobs, 1), Decision::Idle);
    assert!(matches!(
        commit(&state, &knobs, &Decision::Start { hosts: vec!["h2".into(), "h3".into()] }, 1),
        Err(PlanError::StaleDecision(_))
    ));
    let state = observe(&state, &knobs, Observation::Pause);
    let state = observe(&state, &knobs, Observation::Resume);
    assert_eq!(start(&state, &knobs, 2).0, ["h2", "h3"]);
}

#[test]
fn abort_lets_hosts_in_process_finish_and_ends_aborted() {
    let knobs = knobs(json!({"batch": 2}));
    let (_, state) = start(&OpState::new(hosts(5)).expect("state"), &knobs, 0);
    let state = observe(&state, &knobs, Observation::Abort);
    assert_eq!(next(&state, &knobs, 0), Decision::Wait);
    let state = observe(&state, &knobs, ok("h0"));
    let state = observe(&state, &knobs, failed("h1"));
    assert_eq!(next(&state, &knobs, 0), Decision::EndAborted);
    let state = commit(&state, &knobs, &Decision::EndAborted, 0).expect("commit");
    assert_eq!(state.phase, Phase::Aborted);
    assert!(state.hosts[2..].iter().all(|e| e.attempts == 0));
    for control in [Observation::Pause, Observation::Resume, Observation::Abort, Observation::RetryFailed] {
        assert!(matches!(apply(&state, &knobs, &control), Err(PlanError::NotAllowed { phase: "aborted", .. })));
    }
}

#[test]
fn retry_failed_runs_only_the_failed_hosts_again() {
    let knobs = knobs(json!({"batch": 2}));
    let (_, state) = start(&OpState::new(hosts(4)).expect("state"), &knobs, 0);
    let state = observe(&state, &knobs, ok("h0"));
    let state = observe(&state, &knobs, failed("h1"));
    let state = commit(&state, &knobs, &next(&state, &knobs, 0), 0).expect("commit");
    assert!(matches!(state.phase, Phase::Failed { .. }));
    let state = observe(&state, &knobs, Observation::RetryFailed);
    assert_eq!((state.phase.clone(), state.retries), (Phase::Running, 1));
    let (started, state) = start(&state, &knobs, 5);
    assert_eq!(started, ["h1", "h2"]);
    assert_eq!(state.host("h1").map(|e| e.state.clone()), Some(HostState::InProcess { attempt: 2, since_ms: 5 }));
    assert_eq!(state.host("h0").map(|e| e.attempts), Some(1));
    assert!(matches!(apply(&state, &knobs, &Observation::RetryFailed), Err(PlanError::NotAllowed { .. })));
}

#[test]
fn retry_failed_also_follows_a_finish_within_the_budget_and_boot_ids_are_per_attempt() {
    let knobs = knobs(json!({"failure_budget": 1}));
    let (_, state) = start(&OpState::new(hosts(2)).expect("state"), &knobs, 0);
    let state = observe(&state, &knobs, Observation::BootIdSeen { host: "h0".into(), boot_id: "one".into() });
    assert_eq!(state.host("h0").and_then(|e| e.boot_id.clone()), Some("one".into()));
    assert!(matches!(
        apply(&state, &knobs, &Observation::BootIdSeen { host: "h1".into(), boot_id: "x".into() }),
        Err(PlanError::HostNotInProcess { .. })
    ));
    let state = observe(&state, &knobs, failed("h0"));
    let (_, state) = start(&state, &knobs, 1);
    let state = observe(&state, &knobs, ok("h1"));
    let state = commit(&state, &knobs, &next(&state, &knobs, 2), 2).expect("commit");
    assert_eq!(state.phase, Phase::Finished);
    let state = observe(&state, &knobs, Observation::RetryFailed);
    let (started, state) = start(&state, &knobs, 3);
    assert_eq!(started, ["h0"]);
    // a new attempt: the boot id of the last one is gone
    assert_eq!(state.host("h0").map(|e| (e.attempts, e.boot_id.clone())), Some((2, None)));
    // a finish without failures has nothing to retry
    let state = observe(&state, &knobs, ok("h0"));
    let state = commit(&state, &knobs, &next(&state, &knobs, 4), 4).expect("commit");
    assert!(matches!(apply(&state, &knobs, &Observation::RetryFailed), Err(PlanError::NotAllowed { .. })));
}

#[test]
fn soak_and_health_gate_come_between_batches_only() {
    let knobs = knobs(json!({"soak_seconds": 10, "health_gate": true}));
    let state = OpState::new(hosts(2)).expect("state");
    assert!(matches!(apply(&state, &knobs, &Observation::HealthGatePassed), Err(PlanError::NoHealthCheck)));
    let (_, state) = start(&state, &knobs, 0);
    let state = observe(&state, &knobs, ok("h0"));
    let decision = next(&state, &knobs, 100);
    assert_eq!(decision, Decision::WaitSoak { until_ms: 10_100 });
    let state = commit(&state, &knobs, &decision, 100).expect("commit");
    assert_eq!(next(&state, &knobs, 5_000), Decision::WaitSoak { until_ms: 10_100 });
    assert_eq!(next(&state, &knobs, 10_100), Decision::CheckHealth);
    let state = observe(&state, &knobs, Observation::HealthGatePassed);
    let (started, state) = start(&state, &knobs, 10_200);
    assert_eq!(started, ["h1"]);
    let state = observe(&state, &knobs, ok("h1"));
    assert_eq!(next(&state, &knobs, 10_300), Decision::Finish);

    // A failed gate fails the operation, naming no host.
    let (_, state) = start(&OpState::new(hosts(2)).expect("state"), &knobs, 0);
    let state = observe(&state, &knobs, ok("h0"));
    let state = commit(&state, &knobs, &next(&state, &knobs, 0), 0).expect("commit");
    let state = observe(&state, &knobs, Observation::HealthGateFailed { reason: "etcd down".into() });
    assert_eq!(next(&state, &knobs, 20_000), Decision::Fail { host: None, reason: "health gate: etcd down".into() });
}

#[test]
fn ticks_time_hosts_out() {
    let knobs = knobs(json!({"batch": 2, "failure_budget": 5, "host_timeout_seconds": 60}));
    let (_, state) = start(&OpState::new(hosts(2)).expect("state"), &knobs, 1_000);
    let state = observe(&state, &knobs, ok("h0"));
    let state = observe(&state, &knobs, Observation::Tick { now_ms: 60_999 });
    assert_eq!(state.in_process(), 1);
    let state = observe(&state, &knobs, Observation::Tick { now_ms: 61_000 });
    assert_eq!(
        state.host("h1").map(|e| e.state.clone()),
        Some(HostState::Failed { reason: "timed out after 60 s".into() })
    );
}

#[test]
fn illegal_observations_are_typed_errors() {
    let knobs = Knobs::default();
    assert_eq!(OpState::new(["a", "a"]), Err(PlanError::DuplicateHost("a".into())));
    let state = OpState::new(["a", "b"]).expect("state");
    assert_eq!(
        apply(&state, &knobs, &ok("a")),
        Err(PlanError::HostNotInProcess { host: "a".into(), state: "pending" })
    );
    assert_eq!(apply(&state, &knobs, &ok("zz")), Err(PlanError::UnknownHost("zz".into())));
    assert!(matches!(apply(&state, &knobs, &Observation::RetryFailed), Err(PlanError::NotAllowed { .. })));
    assert!(matches!(
        commit(&state, &knobs, &Decision::Start { hosts: vec!["b".into()] }, 0),
        Err(PlanError::StaleDecision(_))
    ));
    assert!(matches!(commit(&state, &knobs, &Decision::Finish, 0), Err(PlanError::StaleDecision(_))));
    let (_, state) = start(&state, &knobs, 0);
    let state = observe(&state, &knobs, ok("a"));
    assert_eq!(apply(&state, &knobs, &ok("a")), Err(PlanError::HostNotInProcess { host: "a".into(), state: "done" }));
    let (_, state) = start(&state, &knobs, 0);
    let state = observe(&state, &knobs, ok("b"));
    let state = commit(&state, &knobs, &Decision::Finish, 0).expect("finish");
    assert!(matches!(apply(&state, &knobs, &Observation::Resume), Err(PlanError::NotAllowed { .. })));
    let text = serde_json::to_string(&state).expect("serialize");
    assert_eq!(serde_json::from_str::<OpState>(&text).expect("deserialize"), state);
}

// ---------------------------------------------------------------------------
// Property tests: the planner driven by a simulated service and clock.

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Succeed,
    Fail,
    TimedOut,
    /// Never answers: the host fails through a `Tick` past its timeout.
    Hang,
}

#[derive(Debug, Clone, Copy)]
enum Control {
    Pause,
    Resume,
    Abort,
}

#[derive(Debug, Clone)]
struct Scenario {
    size: usize,
    knobs: Knobs,
    outcomes: Vec<Outcome>,
    gate_failures: Vec<bool>,
    controls: Vec<(usize, Control)>,
    retries: u32,
    seed: u64,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let batch =
        prop_oneof![(1i64..70).prop_map(Batch::Count), (1u32..=100).prop_map(|p| Batch::Percent(format!("{p}%"))),];
    let outcome = prop_oneof![
        12 => Just(Outcome::Succeed),
        2 => Just(Outcome::Fail),
        1 => Just(Outcome::TimedOut),
        1 => Just(Outcome::Hang),
    ];
    let control = prop_oneof![3 => Just(Control::Pause), 3 => Just(Control::Resume), 1 => Just(Control::Abort)];
    (
        0usize..60,
        (batch, 0i64..4, 0i64..3, any::<bool>()),
        proptest::collection::vec(outcome, 1..64),
        proptest::collection::vec(prop::bool::weighted(0.1), 1..16),
        proptest::collection::vec((0usize..300, control), 0..6),
        0u32..3,
        any::<u64>(),
    )
        .prop_map(
            |(
                size,
                (batch, failure_budget, soak_seconds, health_gate),
                outcomes,
                gate_failures,
                controls,
                retries,
                seed,
            )| {
                Scenario {
                    size,
                    knobs: Knobs { batch, failure_budget, soak_seconds, host_timeout_seconds: 30, health_gate },
                    outcomes,
                    gate_failures,
                    controls,
                    retries,
                    seed,
                }
            },
        )
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// Runs one scenario to its end, checking the invariants at every step.
fn simulate(s: &Scenario) -> Result<(), TestCaseError> {
    let knobs = &s.knobs;
    prop_assert!(knobs.validate().is_ok());
    let names = hosts(s.size);
    let size = batch_size(knobs, s.size);
    let mut state = OpState::new(names.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut rng = Rng(s.seed | 1);
    let mut now: u64 = 0;
    let mut starts: HashMap<String, u32> = HashMap::new();
    let mut allowed: HashMap<String, u32> = names.iter().map(|h| (h.clone(), 1)).collect();
    let mut aborted_at: Option<usize> = None;
    let mut gates = 0usize;
    let mut retries_left = s.retries;
    let bound = 10 * (s.size + 2) * (s.retries as usize + 1) + 50;
    let mut ended = false;
    let fail = |what: String| TestCaseError::fail(what);

    for step in 0..bound {
        for &(at, control) in s.controls.iter().filter(|(at, _)| *at == step) {
            let observation = match control {
                Control::Pause => Observation::Pause,
                Control::Resume => Observation::Resume,
                Control::Abort => Observation::Abort,
            };
            match apply(&state, knobs, &observation) {
                Ok(after) => {
                    if matches!(control, Control::Abort) && aborted_at.is_none() {
                        aborted_at = Some(at);
                    }
                    state = after;
                }
                Err(PlanError::NotAllowed { .. }) => {
                    prop_assert!(state.phase.is_ended() || state.phase == Phase::Aborting)
                }
                Err(other) => return Err(fail(format!("{control:?}: {other}"))),
            }
        }
        let decision = next(&state, knobs, now);
        // Hosts in process also finish while paused (or at random moments).
        let finish_one = matches!(decision, Decision::Wait)
            || (state.in_process() > 0 && (matches!(decision, Decision::Idle) || rng.below(4) == 0));
        if finish_one {
            let in_process: Vec<(String, u32, u64)> = state
                .hosts
                .iter()
                .filter_map(|e| match e.state {
                    HostState::InProcess { attempt, since_ms } => Some((e.address.clone(), attempt, since_ms)),
                    _ => None,
                })
                .collect();
            prop_assert!(!in_process.is_empty(), "wait with nothing in process: {decision:?}");
            let (host, attempt, since_ms) = in_process[rng.below(in_process.len())].clone();
            let index: usize = host[1..].parse().map_err(|_| fail(host.clone()))?;
            let outcome = s.outcomes[(index + 7 * attempt as usize) % s.outcomes.len()];
            let observation = match outcome {
                Outcome::Succeed => ok(&host),
                Outcome::Fail => failed(&host),
                Outcome::TimedOut => Observation::HostTimedOut { host },
                Outcome::Hang => {
                    now = now.max(since_ms + 30_000);
                    Observation::Tick { now_ms: now }
                }
            };
            state = apply(&state, knobs, &observation).map_err(|e| fail(format!("{observation:?}: {e}")))?;
        } else {
            match &decision {
                Decision::Start { hosts } => {
                    prop_assert!(!hosts.is_empty() && hosts.len() <= size, "start {hosts:?}, batch {size}");
                    prop_assert!(aborted_at.is_none(), "started {hosts:?} after the abort");
                    prop_assert!(state.failing.is_none(), "started {hosts:?} while failing");
                    prop_assert_eq!(state.in_process(), 0);
                    let pending: Vec<&String> = state
                        .hosts
                        .iter()
                        .filter(|e| e.state == HostState::Pending)
                        .map(|e| &e.address)
                        .take(hosts.len())
                        .collect();
                    prop_assert_eq!(pending, hosts.iter().collect::<Vec<_>>(), "hostset order");
                    for host in hosts {
                        let count = starts.entry(host.clone()).or_insert(0);
                        *count += 1;
                        prop_assert!(*count <= allowed[host], "{host} started {count} times");
                    }
                    state = commit(&state, knobs, &decision, now).map_err(|e| fail(e.to_string()))?;
                }
                Decision::WaitSoak { until_ms } => {
                    prop_assert!(*until_ms > now);
                    state = commit(&state, knobs, &decision, now).map_err(|e| fail(e.to_string()))?;
                    now = *until_ms;
                }
                Decision::CheckHealth => {
                    let failed_gate = s.gate_failures[gates % s.gate_failures.len()];
                    gates += 1;
                    let observation = if failed_gate {
                        Observation::HealthGateFailed { reason: "unhealthy".into() }
                    } else {
                        Observation::HealthGatePassed
                    };
                    state = apply(&state, knobs, &observation).map_err(|e| fail(e.to_string()))?;
                }
                Decision::Finish | Decision::Fail { .. } | Decision::EndAborted => {
                    state = commit(&state, knobs, &decision, now).map_err(|e| fail(e.to_string()))?;
                }
                Decision::Idle if state.phase == Phase::Paused => {
                    state = apply(&state, knobs, &Observation::Resume).map_err(|e| fail(e.to_string()))?;
                }
                Decision::Idle => {
                    prop_assert!(state.phase.is_ended(), "idle in {:?}", state.phase);
                    if matches!(state.phase, Phase::Failed { .. }) && retries_left > 0 {
                        retries_left -= 1;
                        for entry in state.hosts.iter().filter(|e| matches!(e.state, HostState::Failed { .. })) {
                            *allowed.entry(entry.address.clone()).or_insert(1) += 1;
                        }
                        state = apply(&state, knobs, &Observation::RetryFailed).map_err(|e| fail(e.to_string()))?;
                    } else {
                        ended = true;
                        break;
                    }
                }
                Decision::Wait => unreachable!("handled above"),
            }
        }
        prop_assert!(state.in_process() <= size, "{} in process, batch {size}", state.in_process());
        if state.phase.is_ended() {
            prop_assert_eq!(state.in_process(), 0);
        }
        now += 1;
    }
    prop_assert!(ended, "no end within {bound} steps: {:?}", state.phase);

    let budget = knobs.budget();
    match &state.phase {
        Phase::Finished => {
            prop_assert_eq!(state.pending() + state.in_process(), 0);
            prop_assert!(state.failed() <= budget, "finished with {} failed, budget {budget}", state.failed());
            if budget == 0 {
                prop_assert_eq!(state.done(), s.size);
            }
        }
        Phase::Failed { host: Some(host), .. } => {
            prop_assert!(state.failed() > budget, "failed with {} failed, budget {budget}", state.failed());
            let host_failed = matches!(state.host(host).map(|e| &e.state), Some(HostState::Failed { .. }));
            prop_assert!(host_failed, "the named host {} did not fail", host);
        }
        Phase::Failed { host: None, reason } => {
            prop_assert!(knobs.health_gate && reason.starts_with("health gate"));
        }
        Phase::Aborted => prop_assert!(aborted_at.is_some()),
        other => return Err(fail(format!("ended in {other:?}"))),
    }
    Ok(())
}

/// Cases of the simulation property; each runs a whole operation.
const SIM_CASES: u32 = 2000;

proptest! {
    #![proptest_config(ProptestConfig { cases: SIM_CASES, ..ProptestConfig::default() })]

    #[test]
    fn a_simulated_operation_keeps_the_invariants(s in scenario()) {
        simulate(&s)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn batch_size_is_the_rounded_up_share(size in 0usize..500, percent in 1u64..=100, count in 1i64..1000) {
        let by_percent = Knobs { batch: Batch::Percent(format!("{percent}%")), ..Knobs::default() };
        prop_assert!(by_percent.validate().is_ok());
        let expected = ((size as u64 * percent).div_ceil(100) as usize).max(1).min(size.max(1));
        prop_assert_eq!(batch_size(&by_percent, size), expected);
        let by_count = Knobs { batch: Batch::Count(count), ..Knobs::default() };
        prop_assert_eq!(batch_size(&by_count, size), (count as usize).min(size.max(1)));
    }

    #[test]
    fn percentages_outside_one_to_a_hundred_are_refused(text in "[0-9x.-]{0,4}%?") {
        let knobs = Knobs { batch: Batch::Percent(text.clone()), ..Knobs::default() };
        let valid = text.strip_suffix('%').and_then(|d| d.parse::<u64>().ok()).is_some_and(|v| (1..=100).contains(&v))
            && text[..text.len() - 1].bytes().all(|b| b.is_ascii_digit());
        prop_assert_eq!(knobs.validate().is_ok(), valid, "{}", text);
    }
}

//! Steps that drive the stack through the `commctl` binary only.
//!
//! `When I run commctl "ARGS"` runs `commctl --config <file> ARGS` (ARGS split
//! at spaces after `$word` expansion; `$TEST_KEY_FILE` is the test bed's
//! client key file) with a configuration naming the stack's endpoint and the
//! scenario's user. Variants put a dead endpoint first, or only dead ones.

use std::{
    net::{Ipv4Addr, TcpListener},
    sync::OnceLock,
    time::{Duration, Instant},
};

use commissaire_features::commctl::{Commctl, Output};
use cucumber::{then, when};
use serde_json::Value;

use super::{ApiWorld, Auth};

/// The scenario's commctl state.
#[derive(Debug, Default)]
pub struct State {
    pub last: Option<Output>,
    dir: Option<tempfile::TempDir>,
}

fn commctl() -> &'static Commctl {
    static COMMCTL: OnceLock<Commctl> = OnceLock::new();
    COMMCTL.get_or_init(|| Commctl::locate().unwrap_or_else(|e| panic!("{e:#}")))
}

/// A URL where nothing listens (a port that was free a moment ago).
fn dead_endpoint() -> String {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("a free port").port();
    format!("http://127.0.0.1:{port}")
}

#[derive(Debug, Clone, Copy)]
enum Endpoints {
    Live,
    FirstDown,
    AllDown,
}

impl ApiWorld {
    fn commctl_args(&self, args: &str) -> Vec<String> {
        let key_file = std::env::var("COMMISSAIRE_TEST_KEY").unwrap_or_default();
        self.expand(&args.replace("$TEST_KEY_FILE", &key_file)).split_whitespace().map(str::to_string).collect()
    }

    async fn run_commctl(&mut self, args: &str, endpoints: Endpoints) -> &Output {
        let live = format!("http://{}", self.target.client.addr);
        let list = match endpoints {
            Endpoints::Live => vec![live],
            Endpoints::FirstDown => vec![dead_endpoint(), live],
            Endpoints::AllDown => vec![dead_endpoint(), dead_endpoint()],
        };
        let (user, password) = match &self.auth {
            Auth::Basic(user, password) => (user.clone(), password.clone()),
            // commctl scenarios log in with a user and password
            Auth::Anonymous | Auth::Bearer(_) => (String::new(), String::new()),
        };
        let dir = self.commctl.dir.get_or_insert_with(|| tempfile::tempdir().expect("a temporary directory"));
        let config = dir.path().join(format!("commissaire-{}.json", uuid::Uuid::new_v4().simple()));
        Commctl::write_config(&config, &list, &user, &password).expect("writing the commctl configuration");
        let args = self.commctl_args(args);
        let output = commctl().run(&config, &args).await.unwrap_or_else(|e| panic!("{e:#}"));
        self.commctl.last.insert(output)
    }

    fn commctl_output(&self) -> &Output {
        self.commctl.last.as_ref().expect("commctl has not run yet")
    }
}

#[when(regex = r#"^I run commctl "([^"]*)"$"#)]
async fn run(w: &mut ApiWorld, args: String) {
    w.run_commctl(&args, Endpoints::Live).await;
}

#[when(regex = r#"^I run commctl "([^"]*)" with its first endpoint down$"#)]
async fn run_first_down(w: &mut ApiWorld, args: String) {
    w.run_commctl(&args, Endpoints::FirstDown).await;
}

#[when(regex = r#"^I run commctl "([^"]*)" with every endpoint down$"#)]
async fn run_all_down(w: &mut ApiWorld, args: String) {
    w.run_commctl(&args, Endpoints::AllDown).await;
}

#[then("commctl succeeds")]
async fn succeeds(w: &mut ApiWorld) {
    let output = w.commctl_output();
    assert_eq!(output.code, 0, "{}", output.describe());
}

#[then(regex = r"^commctl exits with (\d+)$")]
async fn exits_with(w: &mut ApiWorld, code: i32) {
    let output = w.commctl_output();
    assert_eq!(output.code, code, "{}", output.describe());
}

#[then(regex = r#"^commctl prints "([^"]*)"$"#)]
async fn prints(w: &mut ApiWorld, text: String) {
    let text = w.expand(&text);
    let output = w.commctl_output();
    assert!(output.stdout.contains(&text), "{text:?} not printed:\n{}", output.describe());
}

#[then(regex = r#"^commctl does not print "([^"]*)"$"#)]
async fn does_not_print(w: &mut ApiWorld, text: String) {
    let text = w.expand(&text);
    let output = w.commctl_output();
    assert!(!output.stdout.contains(&text), "{text:?} printed:\n{}", output.describe());
}

#[then(regex = r#"^commctl's errors mention "([^"]*)"$"#)]
async fn errors_mention(w: &mut ApiWorld, text: String) {
    let text = w.expand(&text);
    let output = w.commctl_output();
    assert!(output.stderr.contains(&text), "{text:?} not on standard error:\n{}", output.describe());
}

#[then(regex = r#"^commctl's JSON output has (.+) at "([^"]*)"$"#)]
async fn json_at(w: &mut ApiWorld, expected: String, pointer: String) {
    let expected: Value = serde_json::from_str(&w.expand(&expected)).expect("the scenario's JSON");
    let output = w.commctl_output();
    let value: Value = serde_json::from_str(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", output.describe()));
    assert_eq!(value.pointer(&pointer), Some(&expected), "{}", output.describe());
}

#[then(regex = r#"^within (\d+) seconds commctl "([^"]*)" has (.+) at "([^"]*)"$"#)]
async fn eventually_json_at(w: &mut ApiWorld, seconds: u64, args: String, expected: String, pointer: String) {
    let expected: Value = serde_json::from_str(&w.expand(&expected)).expect("the scenario's JSON");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let output = w.run_commctl(&args, Endpoints::Live).await.clone();
        let value = serde_json::from_str::<Value>(&output.stdout).ok();
        if output.code == 0 && value.as_ref().and_then(|v| v.pointer(&pointer)) == Some(&expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not {expected} at {pointer} within {seconds}s; last run:\n{}",
            output.describe()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

//! The configuration files shipped in `conf/` parse and do what their README says.

use std::net::{IpAddr, Ipv4Addr};

use base64::Engine;
use clap::Parser;
use commissaire_http::{
    auth::{Authenticator, Credentials, Outcome, PluginSpec, Role},
    settings::Flags,
};
use serde_json::json;

const CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf");

#[tokio::test]
async fn development_user_a_logs_in_with_password_a() {
    let spec = PluginSpec {
        name: "httpbasicauth".into(),
        options: json!({"filepath": format!("{CONF}/users.json")}).as_object().cloned().expect("object"),
    };
    let auth = Authenticator::new(vec![spec]).expect("users.json loads");
    let header = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("a:a"));
    let creds =
        Credentials { authorization: Some(&header), client_cert_cn: None, peer: IpAddr::V4(Ipv4Addr::LOCALHOST) };
    match auth.authenticate(&creds).await {
        Outcome::Authenticated(identity) => {
            assert_eq!(identity.name, "a");
            assert_eq!(identity.role, Role::ReadWrite);
        }
        _ => panic!("the development user a/a must log in"),
    }
}

#[test]
fn server_configuration_parses() {
    let flags = Flags::parse_from(["commissaire-server", "-c", &format!("{CONF}/commissaire.conf")]);
    let settings = flags.resolve().expect("commissaire.conf resolves");
    assert_eq!(settings.listen.to_string(), "127.0.0.1:8000");
    assert_eq!(settings.plugins.len(), 1);
    assert_eq!(settings.plugins[0].options["filepath"], "/etc/commissaire/users.json");
}

#[test]
fn service_configurations_parse() {
    let text = std::fs::read_to_string(format!("{CONF}/containermgr.conf")).expect("read");
    let config = commissaire_core::config::parse(&text, "containermgr.conf").expect("json object");
    assert!(config["bus_uri"].is_string());
}

#[test]
fn investigator_configuration_loads_the_bootstrap() {
    let text = std::fs::read_to_string(format!("{CONF}/investigator.conf")).expect("read");
    let mut config = commissaire_core::config::parse(&text, "investigator.conf").expect("json object");
    assert_eq!(config["playbooks_dir"], "/usr/share/commissaire/playbooks");
    // The installed location does not exist here: use the repository's playbooks.
    config.insert("playbooks_dir".into(), concat!(env!("CARGO_MANIFEST_DIR"), "/../playbooks").into());
    let bootstrap = commissaire_services::investigator::bootstrap_from_config(&config).expect("bootstrap");
    assert_eq!(bootstrap.settings.etcd_server_url.as_deref(), Some("http://127.0.0.1:2379"));
    assert_eq!(bootstrap.settings.flannel_key.as_deref(), Some("/atomic01/network"));
    assert!(bootstrap.playbook.path().ends_with("bootstrap.yaml"));
}

#[test]
fn storage_configurations_parse() {
    for file in ["storage.conf", "storage-embedded.conf"] {
        let text = std::fs::read_to_string(format!("{CONF}/{file}")).expect("read");
        let config = commissaire_core::config::parse(&text, file).expect("json object");
        commissaire_services::storage::handlers::parse(config.get("storage_handlers")).expect("handlers");
    }
}

#[tokio::test]
async fn kubernetes_examples_parse() {
    let flags = Flags::parse_from(["commissaire-server", "-c", &format!("{CONF}/commissaire-kubernetes.conf")]);
    let settings = flags.resolve().expect("commissaire-kubernetes.conf resolves");
    let names: Vec<&str> = settings.plugins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["httpbasicauth", "kubetokenreview"]);
    // the users file of the example is not installed here: check the review plugin alone
    let auth = Authenticator::new(vec![settings.plugins[1].clone()]).expect("the kubetokenreview plugin builds");
    assert_eq!(auth.plugin_names(), ["kubetokenreview"]);

    let text = std::fs::read_to_string(format!("{CONF}/containermanager-kubernetes.json")).expect("read");
    let mut body: serde_json::Value = serde_json::from_str(&text).expect("json");
    body["name"] = json!("example");
    let config = <commissaire_core::model::ContainerManagerConfig as commissaire_core::model::Model>::from_json(
        &body,
        commissaire_core::model::Unknown::Reject,
    )
    .expect("a valid manager");
    let options = commissaire_services::containermgr::KubeOptions::from_options(&config.options).expect("options");
    assert!(!options.insecure_skip_tls_verify);
}

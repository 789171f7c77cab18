//! `httpauthclientcert`: accepts a client certificate that the TLS layer verified
//! against the client CA, optionally only one with a given subject CN.

use serde_json::{Map, Value};

use super::{AuthConfigError, Credentials, Identity, Role, Verdict, check_known_options, role_option, string_option};

pub(crate) const NAME: &str = "httpauthclientcert";

pub(crate) struct ClientCertAuth {
    cn: Option<String>,
    role: Role,
}

impl ClientCertAuth {
    pub(crate) fn new(options: &Map<String, Value>) -> Result<Self, AuthConfigError> {
        check_known_options(NAME, options, &["cn", "role"])?;
        let cn = string_option(NAME, options, "cn")?.map(str::to_string);
        if cn.as_deref().is_some_and(str::is_empty) {
            return Err(AuthConfigError::InvalidOption {
                plugin: NAME,
                option: "cn".into(),
                reason: "must not be empty (leave it out to accept any verified certificate)".into(),
            });
        }
        Ok(ClientCertAuth { cn, role: role_option(NAME, options)? })
    }

    pub(crate) fn check(&self, creds: &Credentials<'_>) -> Verdict {
        let Some(cn) = creds.client_cert_cn else {
            return Verdict::NotApplicable;
        };
        if cn.is_empty() {
            return Verdict::Reject {
                method: "client-cert",
                user: None,
                reason: "certificate has an empty common name",
            };
        }
        match &self.cn {
            Some(wanted) if wanted != cn => Verdict::Reject {
                method: "client-cert",
                user: Some(cn.to_string()),
                reason: "certificate common name does not match",
            },
            _ => Verdict::Accept(Identity { name: cn.to_string(), role: self.role, method: "client-cert" }),
        }
    }
}

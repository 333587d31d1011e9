//! The internal-auth settings of a service.
//!
//! - `INTERNAL_AUTH_KEY`: this service's signing key (`isk_…`), for a service that calls others.
//!   `INTERNAL_AUTH_KEY_FILE` names a file holding it instead (a mounted Secret); set one of the
//!   two, not both.
//! - `INTERNAL_AUTH_TRUSTED_KEYS`: the public keys of the services allowed to call this one,
//!   `<service>=ipk_…` entries separated by commas; list a service twice during a rotation.
//!
//! `<service> generate-internal-key` prints a new key pair in these forms.

use std::{path::PathBuf, sync::Arc};

use settings::{ExposeSecret as _, SecretString, SettingError, Sources};

use crate::{
    keys::{SigningKey, TrustedKeys},
    server::{Guard, Policy},
    token::{Minter, Verifier},
};

/// What a service needs to call others and to be called.
#[derive(Debug, Clone)]
pub struct InternalAuthSettings {
    /// The service's own name: `sub` of the tokens it signs, `aud` of those it accepts.
    pub service: &'static str,
    pub signing_key: Option<SigningKey>,
    pub trusted: TrustedKeys,
}

impl InternalAuthSettings {
    /// Loads the settings of `service`. A value that is set must be valid; whether the service
    /// needs them at all is [`InternalAuthSettings::require`]'s question, asked before serving
    /// (a one-off command such as `migrate` calls no one and serves nothing).
    pub fn load(src: &Sources, service: &'static str) -> Result<Self, SettingError> {
        let inline: Option<SecretString> = src.optional("INTERNAL_AUTH_KEY")?;
        let file: Option<PathBuf> = src.optional("INTERNAL_AUTH_KEY_FILE")?;
        let text = match (inline, file) {
            (Some(_), Some(_)) => {
                return Err(SettingError::new(
                    "INTERNAL_AUTH_KEY_FILE",
                    "cannot be set together with INTERNAL_AUTH_KEY",
                ));
            }
            (Some(key), None) => Some((key, "INTERNAL_AUTH_KEY")),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    SettingError::new(
                        "INTERNAL_AUTH_KEY_FILE",
                        format!("cannot read {}: {}", path.display(), e.kind()),
                    )
                })?;
                Some((SecretString::from(text), "INTERNAL_AUTH_KEY_FILE"))
            }
            (None, None) => None,
        };
        let signing_key = text
            .map(|(text, name)| {
                SigningKey::parse(text.expose_secret())
                    .map_err(|e| SettingError::new(name, e.to_string()))
            })
            .transpose()?;
        let trusted = src
            .optional::<String>("INTERNAL_AUTH_TRUSTED_KEYS")?
            .map(|text| TrustedKeys::parse(&text))
            .transpose()
            .map_err(|e| SettingError::new("INTERNAL_AUTH_TRUSTED_KEYS", e.to_string()))?
            .unwrap_or_default();
        Ok(Self {
            service,
            signing_key,
            trusted,
        })
    }

    /// Checks that what a service needs to serve is there: its signing key when it `calls`
    /// other services, the keys it trusts when it `serves` gRPC.
    pub fn require(&self, calls: bool, serves: bool) -> Result<(), SettingError> {
        let service = self.service;
        if calls && self.signing_key.is_none() {
            return Err(SettingError::new(
                "INTERNAL_AUTH_KEY",
                format!(
                    "is required: {service} calls other services and signs each call \
                     (`{service} generate-internal-key` makes a key)"
                ),
            ));
        }
        if serves && self.trusted.is_empty() {
            return Err(SettingError::new(
                "INTERNAL_AUTH_TRUSTED_KEYS",
                format!(
                    "is required: {service} serves gRPC and accepts only calls signed by the keys listed here"
                ),
            ));
        }
        Ok(())
    }

    /// Signs this service's calls.
    pub fn minter(&self) -> Result<Arc<Minter>, SettingError> {
        self.require(true, false)?;
        let key = self.signing_key.clone().expect("checked by require");
        Ok(Minter::new(self.service, key))
    }

    /// The guard for this service's gRPC server, with its method policy.
    pub fn guard(&self, policy: Policy) -> Result<Guard, SettingError> {
        self.require(false, true)?;
        Ok(Guard::new(
            Verifier::new(self.service, self.trusted.clone()),
            policy,
        ))
    }
}

/// What `<service> generate-internal-key` prints: a new signing key and the entry servers trust
/// it by.
pub fn generate_key_text(service: &str) -> String {
    let text = SigningKey::generate();
    let key = SigningKey::parse(&text).expect("a generated key parses");
    format!(
        "# The signing key of {service}: keep it in a Secret, as INTERNAL_AUTH_KEY (or in the file\n\
         # named by INTERNAL_AUTH_KEY_FILE).\n\
         INTERNAL_AUTH_KEY={text}\n\
         # Add this entry to INTERNAL_AUTH_TRUSTED_KEYS of every service {service} calls.\n\
         {service}={}\n",
        key.public_key()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(pairs: &[(&str, &str)]) -> Sources {
        Sources::from_pairs(pairs.iter().map(|(k, v)| (*k, *v))).unwrap()
    }

    #[test]
    fn what_a_service_needs_is_required() {
        let none = InternalAuthSettings::load(&sources(&[]), "gateway").unwrap();
        assert_eq!(
            none.require(true, false).unwrap_err().name,
            "INTERNAL_AUTH_KEY"
        );
        assert_eq!(none.minter().unwrap_err().name, "INTERNAL_AUTH_KEY");
        assert_eq!(
            none.require(false, true).unwrap_err().name,
            "INTERNAL_AUTH_TRUSTED_KEYS"
        );
        assert!(none.require(false, false).is_ok());
    }

    #[test]
    fn a_bad_key_is_named_and_not_echoed() {
        let err = InternalAuthSettings::load(
            &sources(&[("INTERNAL_AUTH_KEY", "isk_hunter2")]),
            "gateway",
        )
        .unwrap_err();
        assert_eq!(err.name, "INTERNAL_AUTH_KEY");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn the_key_can_come_from_a_file() {
        let text = generate_key_text("gateway");
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("INTERNAL_AUTH_KEY="))
            .unwrap();
        let trusted = text.lines().find(|l| l.starts_with("gateway=")).unwrap();
        let path = std::env::temp_dir().join(format!("internal-key-{}", std::process::id()));
        std::fs::write(&path, format!("{key}\n")).unwrap();
        let settings = InternalAuthSettings::load(
            &sources(&[
                ("INTERNAL_AUTH_KEY_FILE", path.to_str().unwrap()),
                ("INTERNAL_AUTH_TRUSTED_KEYS", trusted),
            ]),
            "gateway",
        )
        .unwrap();
        settings.require(true, true).unwrap();
        std::fs::remove_file(&path).unwrap();
        let token = settings.minter().unwrap().token("gateway", None).unwrap();
        let verified = Verifier::new("gateway", settings.trusted.clone())
            .verify(&token)
            .unwrap();
        assert_eq!(verified.service, "gateway");
        let both = InternalAuthSettings::load(
            &sources(&[("INTERNAL_AUTH_KEY", key), ("INTERNAL_AUTH_KEY_FILE", "/x")]),
            "gateway",
        );
        assert_eq!(both.unwrap_err().name, "INTERNAL_AUTH_KEY_FILE");
    }
}

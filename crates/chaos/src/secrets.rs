//! After the run: no secret anywhere it must not be. Every service log of the run (written at
//! debug level for Sonora's own crates) and a dump of the whole database are searched for each
//! secret the run knows (the database password, the webhook and API tokens, the internal keys,
//! the API key, the source's and every partner endpoint's current secret), and for anything
//! shaped like a Standard Webhooks secret or an API key, which catches secrets the run rotated
//! away too. Only sealed or hashed forms may be stored.

use std::path::Path;

use anyhow::Context as _;

/// Strings shaped like secrets: `whsec_` with a body, and API keys (`cw_live_…`).
const SHAPES: &[&str] = &["whsec_", "cw_live_"];

/// A secret's shape is found when its prefix is followed by at least this many key characters.
const SHAPE_BODY: usize = 16;

fn shaped(text: &str) -> Option<String> {
    for prefix in SHAPES {
        for (at, _) in text.match_indices(prefix) {
            let body: String = text[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '_'))
                .collect();
            if body.len() >= SHAPE_BODY {
                return Some(format!("{prefix}{}…", &body[..4]));
            }
        }
    }
    None
}

/// What was found where (never the secret itself: the finding names it and its place).
pub fn search(
    named: &[(String, String)],
    logs: &Path,
    database_dump: &str,
) -> anyhow::Result<Vec<String>> {
    let mut findings = Vec::new();
    let mut places: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(logs).context("the run's logs")? {
        let path = entry?.path();
        let bytes = std::fs::read(&path)?;
        places.push((
            format!(
                "log {}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    places.push(("the database".to_owned(), database_dump.to_owned()));
    for (place, text) in &places {
        for (name, secret) in named {
            if secret.len() >= 8 && text.contains(secret.as_str()) {
                findings.push(format!("{name} appears in {place}"));
            }
        }
        if let Some(shape) = shaped(text) {
            findings.push(format!(
                "a secret-shaped string ({shape}) appears in {place}"
            ));
        }
    }
    Ok(findings)
}

/// The secrets recorded in `secrets.json`, flattened to (name, value).
pub fn recorded(run_dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(run_dir.join("secrets.json"))?;
    let value: serde_json::Value = serde_json::from_str(&text)?;
    let mut out = Vec::new();
    for (name, v) in value.as_object().context("an object")? {
        match v {
            serde_json::Value::String(s) => out.push((name.clone(), s.clone())),
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(s) = item.as_str() {
                        out.push((format!("{name}[{i}]"), s.to_owned()));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_found_by_value_and_by_shape_and_never_quoted() {
        let dir = std::env::temp_dir().join(format!("chaos-secrets-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("gateway-1.log"),
            "INFO started\nDEBUG token=hunter2hunter2\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("delivery-worker-1.log"),
            "INFO endpoint ep_1 rotated\n",
        )
        .unwrap();
        let named = vec![("codegen_token".to_owned(), "hunter2hunter2".to_owned())];
        let found = search(&named, &dir, "sealed:AAAA").unwrap();
        assert_eq!(found, vec!["codegen_token appears in log gateway-1.log"]);
        assert!(!found.concat().contains("hunter2"));

        let found = search(
            &named,
            &dir,
            "secret = whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .unwrap();
        assert!(
            found
                .iter()
                .any(|f| f.contains("(whsec_MfKQ…) appears in the database")),
            "{found:?}"
        );
        // A prefix alone, as in documentation or an error naming the form, is no secret.
        assert!(shaped("a secret starts with whsec_ and then base64").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Routing rules: which stored events set off which actions. No IO.
//!
//! Rules come from the `ROUTING_RULES` setting: JSON in the environment, or an array of tables
//! in the settings file:
//!
//! ```toml
//! [[ROUTING_RULES]]
//! name = "agent-on-label"        # unique; names the rule in errors and attempts
//! source = "github"               # required
//! event = "issues"                # optional: X-GitHub-Event (a generic source's type)
//! action = "labeled"              # optional: the payload's `action`
//! repository = "acme/*"           # optional glob over repository.full_name (`*`, `?`)
//! label = "agent"                 # optional: the label just added, or one the issue/PR has
//! tenant = "acme"                 # the tenant whose partners a `publish` reaches
//! actions = ["publish", "agent_run"]
//! prompt = "Work on {repository}#{issue.number}: {issue.title}"   # for agent_run
//! ```
//!
//! A field left out matches everything. Every matching rule's actions run.

use ids::Tenant;
use serde::Deserialize;

/// What a rule can set off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Hand the event to the rule's tenant's partners through delivery-worker (the outbox).
    Publish,
    /// Start an agent run on the code-generation API with the rule's prompt.
    AgentRun,
}

/// A rule as written in the settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    source: String,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    repository: Option<String>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    actions: Vec<RuleAction>,
    #[serde(default)]
    prompt: Option<String>,
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub source: String,
    pub event: Option<String>,
    pub action: Option<String>,
    pub repository: Option<String>,
    pub label: Option<String>,
    pub tenant: Option<Tenant>,
    pub actions: Vec<RuleAction>,
    pub prompt: Option<Template>,
}

/// Parses `ROUTING_RULES`; the error names the rule (by position and name) and what is wrong.
pub fn parse_rules(text: &str) -> Result<Vec<Rule>, String> {
    let raw: Vec<RawRule> = serde_json::from_str(text).map_err(|e| {
        format!(
            "must be a list of rules (JSON, or [[ROUTING_RULES]] tables in the settings file): {}",
            e.to_string().split(" at line ").next().unwrap_or_default()
        )
    })?;
    let mut rules: Vec<Rule> = Vec::with_capacity(raw.len());
    for (index, raw) in raw.into_iter().enumerate() {
        let at = |problem: String| format!("rule {} ({:?}): {problem}", index + 1, raw.name);
        let slug = |text: &str| {
            (1..=64).contains(&text.len())
                && text
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b))
        };
        if !slug(&raw.name) {
            return Err(at(
                "name must be 1 to 64 characters of a-z, 0-9, '-' and '_'".into(),
            ));
        }
        if rules.iter().any(|r| r.name == raw.name) {
            return Err(at(
                "name is used by an earlier rule; names must be unique".into()
            ));
        }
        if !slug(&raw.source) {
            return Err(at("source must be a source's name, such as github".into()));
        }
        for (field, value) in [("event", &raw.event), ("action", &raw.action)] {
            if value.as_deref().is_some_and(|v| !slug(v)) {
                return Err(at(format!(
                    "{field} must be 1 to 64 characters of a-z, 0-9, '-' and '_'"
                )));
            }
        }
        if raw.actions.is_empty() {
            return Err(at("actions must name publish, agent_run, or both".into()));
        }
        let tenant = raw
            .tenant
            .as_deref()
            .map(Tenant::parse)
            .transpose()
            .map_err(|e| at(format!("tenant: {e}")))?;
        if raw.actions.contains(&RuleAction::Publish) && tenant.is_none() {
            return Err(at(
                "tenant is required: publish hands the event to that tenant's partners".into(),
            ));
        }
        let prompt = raw
            .prompt
            .as_deref()
            .map(Template::parse)
            .transpose()
            .map_err(|e| at(format!("prompt: {e}")))?;
        if raw.actions.contains(&RuleAction::AgentRun) && prompt.is_none() {
            return Err(at(
                "prompt is required: agent_run starts a run with it".into()
            ));
        }
        rules.push(Rule {
            name: raw.name,
            source: raw.source,
            event: raw.event,
            action: raw.action,
            repository: raw.repository,
            label: raw.label,
            tenant,
            actions: raw.actions,
            prompt,
        });
    }
    Ok(rules)
}

/// What a rule is matched against.
#[derive(Debug, Clone, Copy)]
pub struct EventFacts<'a> {
    pub source: &'a str,
    /// As stored: `issues.labeled` (event and action), or a generic source's type.
    pub event_type: &'a str,
    pub payload: &'a serde_json::Value,
}

impl EventFacts<'_> {
    /// The event (before the first '.') and the action (after it).
    fn split(&self) -> (&str, Option<&str>) {
        match self.event_type.split_once('.') {
            Some((event, action)) => (event, Some(action)),
            None => (self.event_type, None),
        }
    }
}

impl Rule {
    /// Whether the rule applies to the event.
    pub fn matches(&self, facts: &EventFacts<'_>) -> bool {
        let (event, action) = facts.split();
        let payload = facts.payload;
        self.source == facts.source
            && self.event.as_deref().is_none_or(|e| e == event)
            && self.action.as_deref().is_none_or(|a| Some(a) == action)
            && self.repository.as_deref().is_none_or(|glob| {
                payload["repository"]["full_name"]
                    .as_str()
                    .is_some_and(|name| glob_matches(glob, name))
            })
            && self
                .label
                .as_deref()
                .is_none_or(|label| labels(payload).any(|l| l == label))
    }
}

/// Whether events of `source` have a built-in action whatever the rules: a Replicate prediction
/// completes its job on audio-generation.
pub fn has_builtin_action(source: &str) -> bool {
    source == "replicate"
}

/// Whether `event` has anything to run: its source's built-in action
/// ([`has_builtin_action`]), or the actions of a rule that matches it. The receivers store an
/// event with nothing to run as `done` at once, so the dispatcher never claims it; the dispatcher
/// plans with the same two (`actions::Actions::plan`).
pub fn has_work(rules: &[Rule], facts: &EventFacts<'_>) -> bool {
    has_builtin_action(facts.source) || rules.iter().any(|rule| rule.matches(facts))
}

/// The label an event is about (`label.name`, as in `issues.labeled`) and the labels of its
/// issue or pull request.
fn labels(payload: &serde_json::Value) -> impl Iterator<Item = &str> {
    let current = payload["label"]["name"].as_str();
    let on = |field: &str| {
        payload[field]["labels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["name"].as_str())
    };
    current
        .into_iter()
        .chain(on("issue"))
        .chain(on("pull_request"))
}

/// `*` matches any run of characters, `?` any one; everything else itself.
pub fn glob_matches(glob: &str, text: &str) -> bool {
    let (glob, text): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match glob.get(g) {
            Some('*') => {
                star = Some((g, t));
                g += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                g += 1;
                t += 1;
            }
            _ => match star {
                Some((sg, st)) => {
                    g = sg + 1;
                    t = st + 1;
                    star = Some((sg, st + 1));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == '*')
}

/// A prompt template: text with `{field.path}` placeholders filled from the event's payload
/// (`{issue.title}`, `{issue.labels.0.name}`), and `{source}`, `{event}`, `{action}`,
/// `{repository}` (the repository's full name) and `{label}` (the label just added). `{{` and
/// `}}` write braces. A placeholder whose field is missing is left empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Vec<String>),
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() || text.len() > 20_000 {
            return Err("must be 1 to 20000 characters".into());
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut field = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) if c.is_ascii_alphanumeric() || c == '_' || c == '.' => {
                                field.push(c);
                            }
                            _ => {
                                return Err(
                                    "a placeholder must be {field.path} of letters, digits, '_' and '.', closed by '}' (write {{ for a brace)"
                                        .into(),
                                );
                            }
                        }
                    }
                    if field.is_empty() || field.split('.').any(str::is_empty) {
                        return Err(format!("placeholder {{{field}}} is not a field path"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field(field.split('.').map(str::to_owned).collect()));
                }
                '}' => return Err("a lone '}' (write }} for a brace)".into()),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Self(parts))
    }

    /// The prompt for an event.
    pub fn render(&self, facts: &EventFacts<'_>) -> String {
        let (event, action) = facts.split();
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field(path) => {
                    let shortcut = match path.as_slice() {
                        [one] => match one.as_str() {
                            "source" => Some(facts.source.to_owned()),
                            "event" => Some(event.to_owned()),
                            "action" => Some(action.unwrap_or_default().to_owned()),
                            "repository" => facts.payload["repository"]["full_name"]
                                .as_str()
                                .map(str::to_owned),
                            "label" => facts.payload["label"]["name"].as_str().map(str::to_owned),
                            _ => None,
                        },
                        _ => None,
                    };
                    let value = shortcut.unwrap_or_else(|| {
                        let mut value = facts.payload;
                        for key in path {
                            value = match key.parse::<usize>() {
                                Ok(index) if value.is_array() => &value[index],
                                _ => &value[key.as_str()],
                            };
                        }
                        match value {
                            serde_json::Value::Null => String::new(),
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        }
                    });
                    out.push_str(&value);
                }
            }
        }
        out
    }
}

/// The template as written (up to how its braces were escaped), for showing the rule.
impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in &self.0 {
            match part {
                Part::Text(text) => f.write_str(&text.replace('{', "{{").replace('}', "}}"))?,
                Part::Field(path) => write!(f, "{{{}}}", path.join("."))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"[
        {"name": "agent-on-label", "source": "github", "event": "issues", "action": "labeled",
         "repository": "acme/*", "label": "agent", "tenant": "acme",
         "actions": ["publish", "agent_run"],
         "prompt": "Fix {repository}#{issue.number}: {issue.title} ({label}, {{literal}})"},
        {"name": "all-github", "source": "github", "tenant": "beta", "actions": ["publish"]}
    ]"#;

    fn labeled() -> serde_json::Value {
        serde_json::json!({
            "action": "labeled",
            "issue": {"number": 7, "title": "Sound is too quiet", "labels": [{"name": "bug"}, {"name": "agent"}]},
            "label": {"name": "agent"},
            "repository": {"full_name": "acme/narrator"}
        })
    }

    #[test]
    fn rules_match_by_source_event_action_repository_and_label() {
        let rules = parse_rules(RULES).unwrap();
        let payload = labeled();
        let facts = EventFacts {
            source: "github",
            event_type: "issues.labeled",
            payload: &payload,
        };
        assert!(rules[0].matches(&facts) && rules[1].matches(&facts));
        for (event_type, payload) in [
            ("issues.opened", labeled()),
            ("pull_request.labeled", labeled()),
        ] {
            let facts = EventFacts {
                source: "github",
                event_type,
                payload: &payload,
            };
            assert!(!rules[0].matches(&facts), "{event_type}");
            assert!(rules[1].matches(&facts));
        }
        let mut other_repo = labeled();
        other_repo["repository"]["full_name"] = "zeta/narrator".into();
        let mut other_label = labeled();
        other_label["label"]["name"] = "docs".into();
        other_label["issue"]["labels"] = serde_json::json!([]);
        for payload in [other_repo, other_label] {
            let facts = EventFacts {
                source: "github",
                event_type: "issues.labeled",
                payload: &payload,
            };
            assert!(!rules[0].matches(&facts), "{payload}");
        }
        let facts = EventFacts {
            source: "replicate",
            event_type: "succeeded",
            payload: &payload,
        };
        assert!(!rules[1].matches(&facts));
    }

    #[test]
    fn prompts_are_filled_from_the_event() {
        let rules = parse_rules(RULES).unwrap();
        let payload = labeled();
        let facts = EventFacts {
            source: "github",
            event_type: "issues.labeled",
            payload: &payload,
        };
        assert_eq!(
            rules[0].prompt.as_ref().unwrap().render(&facts),
            "Fix acme/narrator#7: Sound is too quiet (agent, {literal})"
        );
        let t = Template::parse("{issue.labels.1.name}|{missing.field}|{action}").unwrap();
        assert_eq!(t.render(&facts), "agent||labeled");
        // Shown as written, so the console can show a rule's prompt.
        for written in [
            "Fix {repository}#{issue.number}: {issue.title} ({label}, {{literal}})",
            "{issue.labels.1.name}|{missing.field}|{action}",
        ] {
            assert_eq!(Template::parse(written).unwrap().to_string(), written);
        }
    }

    #[test]
    fn bad_rules_are_refused_naming_the_rule_and_the_field() {
        for (rules, expected) in [
            (r#"{"name": "x"}"#, "must be a list of rules"),
            (
                r#"[{"name": "a", "source": "github", "actions": ["publish"]}]"#,
                "rule 1 (\"a\"): tenant is required",
            ),
            (
                r#"[{"name": "a", "source": "github", "actions": ["agent_run"]}]"#,
                "rule 1 (\"a\"): prompt is required",
            ),
            (
                r#"[{"name": "a", "source": "github", "actions": ["agent_run"], "prompt": "{issue.title"}]"#,
                "rule 1 (\"a\"): prompt: a placeholder",
            ),
            (
                r#"[{"name": "a", "source": "github", "actions": []}]"#,
                "actions must name",
            ),
            (
                r#"[{"name": "a", "source": "github", "actions": ["email"]}]"#,
                "unknown variant",
            ),
            (
                r#"[{"name": "a", "source": "github", "actions": ["publish"], "tenant": "acme", "colour": "red"}]"#,
                "unknown field",
            ),
            (
                r#"[{"name": "Bad Name", "source": "github", "actions": ["publish"], "tenant": "acme"}]"#,
                "name must be",
            ),
            (
                r#"[{"name": "a", "source": "github", "tenant": "a b", "actions": ["publish"]}]"#,
                "rule 1 (\"a\"): tenant:",
            ),
            (
                r#"[{"name": "a", "source": "github", "tenant": "acme", "actions": ["publish"]}, {"name": "a", "source": "github", "tenant": "acme", "actions": ["publish"]}]"#,
                "rule 2 (\"a\"): name is used",
            ),
        ] {
            let error = parse_rules(rules).unwrap_err();
            assert!(error.contains(expected), "{rules}: {error}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_matches("acme/*", "acme/narrator"));
        assert!(glob_matches("*", "anything/at-all"));
        assert!(glob_matches("acme/narr?tor", "acme/narrator"));
        assert!(glob_matches("*/narrator", "acme/narrator"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("acme/*", "acme2/narrator"));
        assert!(!glob_matches("acme/narrator", "acme/narrator2"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
    }
}

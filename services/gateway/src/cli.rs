//! `gateway keys …`: the operator's key tool, as the old `generate_api_keys.py` was used.
//!
//! ```text
//! gateway keys create [-n 5] [--prefix cw_live_] [--name-prefix "Production Key"] [--tenant acme]
//!                     [--scopes "tts audio"] [--plan standard] [--sql]
//! gateway keys list [--tenant acme]
//! gateway keys revoke <key_id>
//! ```
//!
//! `create` writes the keys (and the tenant, if new) and prints each full key once, with its
//! prefix and hash; `--sql` writes nothing and prints the INSERT statements instead.

#![allow(
    clippy::print_stdout,
    reason = "a command-line tool answers on standard output"
)]

use chrono::Utc;
use ids::{KeyId, Tenant};
use internal_rpc::{Scope, Scopes};
use settings::ExposeSecret as _;

use crate::{
    Settings,
    keys::{self, NewKey, Pepper},
};

/// The tenant of keys made without `--tenant` (the old tool had none).
pub const DEFAULT_TENANT: &str = "default";

const USAGE: &str = "usage: gateway keys create [-n COUNT] [--prefix cw_live_] [--name-prefix NAME] \
[--tenant TENANT] [--scopes \"tts audio webhooks usage admin\"] [--plan standard] [--sql]\n\
       gateway keys list [--tenant TENANT]\n\
       gateway keys revoke KEY_ID";

#[derive(Debug, PartialEq)]
struct CreateArgs {
    count: usize,
    prefix: String,
    name_prefix: String,
    tenant: Tenant,
    scopes: Scopes,
    plan: String,
    sql: bool,
}

fn value<'a>(
    args: &mut impl Iterator<Item = &'a String>,
    flag: &str,
) -> anyhow::Result<&'a String> {
    args.next()
        .ok_or_else(|| anyhow::anyhow!("{flag} needs a value\n{USAGE}"))
}

fn parse_create(args: &[String]) -> anyhow::Result<CreateArgs> {
    let mut parsed = CreateArgs {
        count: 1,
        prefix: keys::DEFAULT_PREFIX.to_owned(),
        name_prefix: "API Key".to_owned(),
        tenant: Tenant::parse(DEFAULT_TENANT).expect("a valid slug"),
        scopes: Scopes::of([Scope::Tts, Scope::Audio, Scope::Webhooks, Scope::Usage]),
        plan: "standard".to_owned(),
        sql: false,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "-n" | "--count" => {
                parsed.count = value(&mut args, flag)?
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| anyhow::anyhow!("-n must be a number from 1 to 1000"))?;
            }
            "--prefix" => parsed.prefix = value(&mut args, flag)?.clone(),
            "--name-prefix" => parsed.name_prefix = value(&mut args, flag)?.clone(),
            "--tenant" => {
                parsed.tenant = Tenant::parse(value(&mut args, flag)?)
                    .map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
            }
            "--scopes" => {
                parsed.scopes = Scopes::parse(&value(&mut args, flag)?.replace(',', " "))
                    .map_err(|e| anyhow::anyhow!("--scopes: {e}"))?;
            }
            "--plan" => parsed.plan = value(&mut args, flag)?.clone(),
            "--sql" => parsed.sql = true,
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(parsed)
}

/// Runs `gateway keys …`.
pub async fn keys(settings: Settings, args: Vec<String>) -> anyhow::Result<()> {
    let pepper = Pepper::new(settings.api_keys.require()?);
    match args.split_first() {
        Some((command, rest)) if command == "create" => create(&settings, &pepper, rest).await,
        Some((command, rest)) if command == "list" => list(&settings, rest).await,
        Some((command, [id])) if command == "revoke" => revoke(&settings, id).await,
        _ => anyhow::bail!("{USAGE}"),
    }
}

/// A pool on the gateway's schema; `migrate` first when the tool may be the first to run
/// (creating the first keys of a new installation).
async fn pool(settings: &Settings, migrate: bool) -> anyhow::Result<database::Pool> {
    let config = database::DatabaseConfig::from_settings(&settings.database, crate::SCHEMA);
    if migrate {
        database::migrate_command(&settings.database, crate::SCHEMA, crate::MIGRATIONS).await?;
    }
    Ok(database::connect(&config)?)
}

async fn create(settings: &Settings, pepper: &Pepper, args: &[String]) -> anyhow::Result<()> {
    let args = parse_create(args)?;
    let now = Utc::now();
    let mut made = Vec::new();
    for i in 1..=args.count {
        let new = NewKey {
            tenant: args.tenant.clone(),
            name: format!("{} {i}", args.name_prefix),
            prefix: args.prefix.clone(),
            scopes: args.scopes,
            plan: args.plan.clone(),
            expires_at: None,
        };
        new.check(now).map_err(|e| anyhow::anyhow!("{e}"))?;
        made.push(keys::make(pepper, &new, now));
    }
    if args.sql {
        println!(
            "INSERT INTO gateway.tenants (id, name, created_at) VALUES ('{0}', '{0}', now()) ON CONFLICT (id) DO NOTHING;",
            args.tenant
        );
        for key in &made {
            println!("-- {}: {}", key.record.name, key.key.expose_secret());
            println!("{}", keys::insert_sql(&key.record));
        }
        return Ok(());
    }
    let pool = pool(settings, true).await?;
    keys::create_tenant(&pool, &args.tenant, now).await?;
    // Each key is printed as soon as it is stored: if a later one fails, every stored key has
    // been shown.
    for (i, key) in made.iter().enumerate() {
        keys::insert(&pool, &key.record).await?;
        println!("Key {}:", i + 1);
        println!("  Id:       {}", key.record.id);
        println!("  Name:     {}", key.record.name);
        println!("  Tenant:   {}", key.record.tenant);
        println!("  Scopes:   {}", key.record.scope_names().join(" "));
        println!("  Full Key: {}", key.key.expose_secret());
        println!("  Prefix:   {}", key.record.prefix);
        println!("  Hash:     {}", key.record.hash);
        println!();
    }
    println!("⚠️  CRITICAL: Store these keys securely! They are not shown again.");
    Ok(())
}

async fn list(settings: &Settings, args: &[String]) -> anyhow::Result<()> {
    let tenant = match args {
        [] => None,
        [flag, tenant] if flag == "--tenant" => {
            Some(Tenant::parse(tenant).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?)
        }
        _ => anyhow::bail!("{USAGE}"),
    };
    let pool = pool(settings, false).await?;
    for key in keys::list(&pool, tenant.as_ref()).await? {
        let state = match (key.revoked_at, key.expires_at) {
            (Some(at), _) => format!("revoked {at}"),
            (None, Some(at)) if at <= Utc::now() => format!("expired {at}"),
            _ => "active".to_owned(),
        };
        println!(
            "{}  {}  {}  {:?}  [{}]  {}  {state}",
            key.id,
            key.tenant,
            key.display(),
            key.name,
            key.scope_names().join(" "),
            key.plan
        );
    }
    Ok(())
}

async fn revoke(settings: &Settings, id: &str) -> anyhow::Result<()> {
    let id = KeyId::parse(id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pool = pool(settings, false).await?;
    let revoked = keys::revoke(&pool, None, id, Utc::now())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no API key has the id {id}"))?;
    let redis = redis_pool::connect(&redis_pool::RedisConfig::from_settings(&settings.redis))?;
    crate::auth::publish_revoked(&redis, &revoked).await;
    println!(
        "revoked {} ({}) of {}",
        revoked.id,
        revoked.display(),
        revoked.tenant
    );
    Ok(())
}

const VOICES_USAGE: &str = "usage: gateway voices list\n\
       gateway voices rename VOICE NAME\n\
       gateway voices disable VOICE\n\
       gateway voices enable VOICE\n\
(VOICE is a voice's UUID or slug, as GET /v1/voices lists them)";

/// Runs `gateway voices …`: the operator's changes to the shared voice catalogue (every tenant
/// sees the same voices, so no tenant's key may change them). Replicas see a change within 30 s.
pub async fn voices(settings: Settings, args: Vec<String>) -> anyhow::Result<()> {
    let pool = pool(&settings, false).await?;
    let changed = match args.as_slice() {
        [command] if command == "list" => {
            for voice in crate::voices::all(&pool).await? {
                println!(
                    "{}  {:<28} {:<32} {}{}",
                    voice.id,
                    voice.slug,
                    voice.display_name,
                    if voice.enabled { "enabled" } else { "disabled" },
                    if voice.available { "" } else { ", not loaded" }
                );
            }
            return Ok(());
        }
        [command, voice, name] if command == "rename" => {
            let name = name.trim();
            if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
                anyhow::bail!("NAME must be 1 to 100 characters, without control characters");
            }
            crate::voices::update(&pool, voice, Some(name), None).await?
        }
        [command, voice] if command == "disable" => {
            crate::voices::update(&pool, voice, None, Some(false)).await?
        }
        [command, voice] if command == "enable" => {
            crate::voices::update(&pool, voice, None, Some(true)).await?
        }
        _ => anyhow::bail!("{VOICES_USAGE}"),
    };
    let voice = changed.ok_or_else(|| {
        anyhow::anyhow!("no voice has that UUID or slug (gateway voices list shows them)")
    })?;
    println!(
        "{}  {}  {:?}  {}",
        voice.id,
        voice.slug,
        voice.display_name,
        if voice.enabled { "enabled" } else { "disabled" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &[&str]) -> Vec<String> {
        text.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_old_tools_flags_work() {
        let parsed = parse_create(&args(&[
            "-n",
            "5",
            "--prefix",
            "cw_live_",
            "--name-prefix",
            "Production Key",
        ]))
        .unwrap();
        assert_eq!(parsed.count, 5);
        assert_eq!(parsed.prefix, "cw_live_");
        assert_eq!(parsed.name_prefix, "Production Key");
        assert_eq!(parsed.tenant.as_str(), DEFAULT_TENANT);
        assert!(!parsed.sql);
        let sql = parse_create(&args(&[
            "-n",
            "5",
            "--sql",
            "--tenant",
            "acme",
            "--scopes",
            "tts,admin",
        ]))
        .unwrap();
        assert!(sql.sql);
        assert_eq!(sql.scopes, Scopes::of([Scope::Tts, Scope::Admin]));
        assert!(parse_create(&args(&["-n", "0"])).is_err());
        assert!(parse_create(&args(&["--tenant", "Not A Slug"])).is_err());
        assert!(parse_create(&args(&["--bogus"])).is_err());
    }
}

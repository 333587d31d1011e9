//! The migration harness and the schema-confined pool, against the real PostgreSQL.

use std::time::Duration;

use database::{DatabaseConfig, EmbeddedMigrations, embed_migrations};
use diesel::{QueryableByName, sql_types::Text};
use diesel_async::RunQueryDsl;
use test_support::TestDatabase;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("tests/migrations");

fn config(url: &str, schema: &'static str) -> DatabaseConfig {
    DatabaseConfig {
        url: url.to_owned(),
        schema,
        pool_size: 4,
        connect_timeout: Duration::from_secs(5),
    }
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    text: String,
}

#[tokio::test]
async fn concurrent_migrations_apply_once_into_the_service_schema() {
    let db = TestDatabase::create().await.unwrap();
    let config = config(&db.url, "svc_one");
    let runs = futures::future::join_all((0..4).map(|_| {
        let config = config.clone();
        async move { database::migrate(&config, MIGRATIONS).await.unwrap() }
    }))
    .await;
    let applied: usize = runs.iter().map(Vec::len).sum();
    assert_eq!(
        applied, 1,
        "exactly one run applies the migration: {runs:?}"
    );

    // Pooled connections see the schema's tables without a prefix...
    let pool = database::connect(&config).unwrap();
    let mut conn = database::get(&pool).await.unwrap();
    diesel::sql_query("INSERT INTO notes (body) VALUES ('hello')")
        .execute(&mut conn)
        .await
        .unwrap();
    let row: Row = diesel::sql_query("SELECT body AS text FROM notes")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(row.text, "hello");
    // ...and the tables, the bookkeeping included, live in that schema.
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT table_schema || '.' || table_name AS text FROM information_schema.tables \
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let names: Vec<_> = rows.into_iter().map(|r| r.text).collect();
    assert_eq!(
        names,
        ["svc_one.__diesel_schema_migrations", "svc_one.notes"]
    );

    // Running again applies nothing.
    assert!(
        database::migrate(&config, MIGRATIONS)
            .await
            .unwrap()
            .is_empty()
    );
    database::ping(&pool).await.unwrap();
}

#[tokio::test]
async fn two_services_in_one_database_keep_their_own_tables() {
    let db = TestDatabase::create().await.unwrap();
    for schema in ["svc_a", "svc_b"] {
        database::migrate(&config(&db.url, schema), MIGRATIONS)
            .await
            .unwrap();
    }
    let pool_a = database::connect(&config(&db.url, "svc_a")).unwrap();
    let pool_b = database::connect(&config(&db.url, "svc_b")).unwrap();
    let mut a = database::get(&pool_a).await.unwrap();
    diesel::sql_query("INSERT INTO notes (body) VALUES ('only in a')")
        .execute(&mut a)
        .await
        .unwrap();
    let mut b = database::get(&pool_b).await.unwrap();
    let rows: Vec<Row> = diesel::sql_query("SELECT body AS text FROM notes")
        .load(&mut b)
        .await
        .unwrap();
    assert!(rows.is_empty());
}

#[tokio::test]
async fn an_unreachable_server_fails_fast_with_a_clear_error() {
    let config = config("postgres://nobody:secret@127.0.0.1:1/none", "svc");
    let started = std::time::Instant::now();
    let error = database::migrate(&config, MIGRATIONS).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(6));
    let text = error.to_string();
    assert!(text.contains("cannot connect"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    let pool = database::connect(&config).unwrap();
    assert!(database::ping(&pool).await.is_err());
}

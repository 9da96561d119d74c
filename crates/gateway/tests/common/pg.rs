//! PostgreSQL for the cluster tests: `TRUNKLINE_TEST_DATABASE_URL` (`.ci/postgres-start` sets it
//! up on 127.0.0.1). Each test gets its own database, so tests run in parallel.

use sqlx::Connection;

/// A fresh database named after `test` in the test cluster, or `None` (with the reason printed)
/// when no server is configured outside CI. In CI (`CI` set) a missing server fails the test.
pub async fn database(test: &str) -> Option<String> {
    let Ok(base) = std::env::var("TRUNKLINE_TEST_DATABASE_URL") else {
        let why = "TRUNKLINE_TEST_DATABASE_URL is not set (run: eval \"$(.ci/postgres-start)\")";
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("SKIPPED {test}: {why}");
        return None;
    };
    let name = format!("tl_{test}_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("connect {base}: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("drop database");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create database");
    let (head, _) = base.rsplit_once('/').expect("URL with a database path");
    Some(format!("{head}/{name}"))
}

//! Test support: a fresh, empty database per test on the throw-away cluster `scripts/test.sh`
//! starts.
//!
//! PostgreSQL tests never skip: without the cluster's URL they fail, loudly, saying how to run
//! them, because a skipped test would let a broken adapter pass CI.

use tokio_postgres::NoTls;

/// The environment variable holding an admin URL of the test cluster, such as
/// `postgres://postgres@127.0.0.1:54321/postgres`.
pub const TEST_URL_VARIABLE: &str = "CREDITGRAPH_TEST_POSTGRES_URL";

/// Creates a database with a random name on the test cluster and returns its URL.
///
/// # Panics
/// When `CREDITGRAPH_TEST_POSTGRES_URL` is unset or the cluster cannot be reached: this is test
/// code, and a test without its database must fail rather than skip.
pub async fn fresh_database() -> String {
    let admin_url = match std::env::var(TEST_URL_VARIABLE) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{TEST_URL_VARIABLE} is not set. PostgreSQL tests need a throw-away cluster: run them with \
             `scripts/test.sh` (all tests) or `scripts/test.sh -p store-postgres`, which starts one, sets \
             {TEST_URL_VARIABLE} and removes the cluster afterwards; or point {TEST_URL_VARIABLE} at an admin URL \
             such as postgres://postgres@127.0.0.1:5432/postgres"
        ),
    };
    let (client, connection) = tokio_postgres::connect(&admin_url, NoTls)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to the test cluster at {admin_url}: {error}"));
    let driver = tokio::spawn(connection);
    let name = format!("creditgraph_test_{:016x}", rand::random::<u64>());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|error| panic!("cannot create test database {name}: {error:?}"));
    drop(client);
    let _ = driver.await;
    with_database(&admin_url, &name)
}

/// `url` with its database name replaced by `database` (query parameters kept).
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |index| index + 3);
    let path_start = base[authority_start..].find('/').map_or(base.len(), |index| authority_start + index);
    let mut result = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        result.push('?');
        result.push_str(query);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5/t1"
        );
        assert_eq!(with_database("postgres://u@h:5", "t1"), "postgres://u@h:5/t1");
        assert_eq!(with_database("postgresql://u@h/db?sslmode=disable", "t1"), "postgresql://u@h/t1?sslmode=disable");
    }
}

//! keyshift's engine: what runs against production. No test harness code.
//!
//! Each migration is one folder; what they share sits apart, below them:
//!
//! - `error`: the engine's one error type; a leaf that imports nothing of
//!   the crate.
//! - `keys`: the key grammar of DESIGN §1 (parse and build keys, escape
//!   globs); `keys::schema`, the keyspace patterns as data (built-in TOML
//!   or `--schema FILE`).
//! - `connection`: the client seam, [`connection::RedisConn`]: one server
//!   or a Redis Cluster (`redis+cluster://`, or a cluster node detected),
//!   SCAN over every primary (`connection::scan`), and `rediss://` with a
//!   private CA and client certificates (`connection::tls`, where every
//!   `redis::Client` is built).
//! - `run`: what every run shares: the journal of runs and per-key
//!   outcomes in Redis (it takes the migration's name), the runner lock,
//!   and the invariant results verifiers report.
//! - `order_placed`: Phase 1 (plan, runner, rollback, verify, the store
//!   seam with its standalone and cluster writers, its Lua).
//! - `cleanup_legacy`: Phase 1.5, deleting the legacy position cache.
//! - `grid_positions`: Phase 2 (plan, runner, rollback, verify, `debris`
//!   for cleanup-migration, the store seam with its standalone and cluster
//!   writers, its Lua).
//! - `api`: the application's data layer, old and new (DESIGN §3).
//! - `validate`: classifies a live keyspace with the schema.

pub mod api;
pub mod cleanup_legacy;
pub mod connection;
pub mod error;
pub mod grid_positions;
pub mod keys;
pub mod order_placed;
pub mod run;
pub mod validate;

pub use error::{EngineError, Result};

/// Query parameters that carry a secret (`pass` is redis-rs's, for
/// `redis+unix://`); compared case-insensitively.
const SECRET_PARAMS: [&str; 7] = [
    "pass", "password", "passwd", "pwd", "secret", "token", "auth",
];

/// A Redis URL with its secrets replaced by `***`, for logs, errors and
/// reports: the password of `user:password@` (a lone `secret@` is masked
/// whole, as some write the password there), and the values of secret
/// query parameters. Any scheme (`redis`, `rediss`, `redis+cluster`,
/// `redis+unix`, ...). Everything up to the last `@` counts as userinfo, so
/// a password holding `/`, `?`, `#` or `@` unescaped is masked too.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (userinfo, after) = match rest.rsplit_once('@') {
        Some((userinfo, after)) => (Some(userinfo), after),
        None => (None, rest),
    };
    let mut out = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    if let Some(userinfo) = userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push_str(":***@");
            }
            None => out.push_str("***@"),
        }
    }
    out.push_str(&redact_query(after));
    out
}

/// `host/path?a=1&pass=x#frag` with the secret parameters' values masked.
fn redact_query(s: &str) -> String {
    let Some((base, query)) = s.split_once('?') else {
        return s.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(key)) => {
                format!("{key}=***")
            }
            _ => pair.to_owned(),
        })
        .collect();
    let mut out = format!("{base}?{}", pairs.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_leave_redact_url() {
        assert_eq!(
            redact_url("redis://:s3cret@h:6379/0"),
            "redis://:***@h:6379/0"
        );
        assert_eq!(
            redact_url("rediss://bot:s3cret@h:6380"),
            "rediss://bot:***@h:6380"
        );
        assert_eq!(redact_url("redis://s3cret@h"), "redis://***@h");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn every_scheme_and_form_is_masked() {
        for (url, masked) in [
            (
                "redis+cluster://bot:s3cret@node-1:7000",
                "redis+cluster://bot:***@node-1:7000",
            ),
            (
                "rediss+cluster://:s3cret@node-1:7000/#insecure",
                "rediss+cluster://:***@node-1:7000/#insecure",
            ),
            ("rediss://bot:@h:6380", "rediss://bot:***@h:6380"),
            ("rediss://h:6380/#insecure", "rediss://h:6380/#insecure"),
            (
                "redis+unix:///run/redis.sock?db=1&user=bot&pass=s3cret",
                "redis+unix:///run/redis.sock?db=1&user=bot&pass=***",
            ),
            (
                "redis://h:6379/0?protocol=resp3&Password=s3cret#x",
                "redis://h:6379/0?protocol=resp3&Password=***#x",
            ),
            ("h:6379", "h:6379"),
            (":s3cret@h:6379", ":***@h:6379"),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), masked, "{url}");
        }
    }

    #[test]
    fn unescaped_separators_in_a_password_do_not_leak_it() {
        for url in [
            "redis://bot:pa/s3cret@h:6379/0",
            "redis://bot:pa?s3cret@h:6379",
            "redis://bot:pa#s3cret@h:6379",
            "redis://bot:pa@s3cret@h:6379",
            "redis://bot:pa:s3cret@h:6379",
        ] {
            let masked = redact_url(url);
            assert!(!masked.contains("s3cret"), "{url} -> {masked}");
            assert!(masked.starts_with("redis://bot:***@h:6379"), "{masked}");
        }
    }

    proptest::proptest! {
        /// Whatever the password (printable ASCII but spaces), it never
        /// survives redaction, with or without a user name.
        #[test]
        fn no_password_survives(user in "[a-z]{0,8}", password in "[!-~]{4,24}", port in 1u16..) {
            let url = format!("rediss://{user}:{password}@redis.example:{port}/0");
            let masked = redact_url(&url);
            // A password that is part of the masked text itself (`edis`) proves nothing.
            proptest::prop_assume!(!format!("rediss://{user}:***@redis.example:{port}/0").contains(&password));
            proptest::prop_assert!(!masked.contains(&password), "{} -> {}", url, masked);
        }
    }
}

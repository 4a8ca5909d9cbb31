//! libpq's conventions for finding a server, as DBAs know them from `psql`: connection
//! strings and URLs, service files, environment variables, the password file, and the
//! checked [`ConnParams`] they resolve to. Pure logic over files and the environment; no
//! network.

pub mod conninfo;
pub mod params;
pub mod pgpass;
pub mod service;

use std::fmt;

/// A secret (password, key passphrase): no `Display`, and `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for handing to the server or to OpenSSL only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

//! Defaults shared by the command-line definitions.

/// No scheme: `http://`, or `https://` when TLS is configured.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7420";

//! The address table and the registry: small, read-mostly, held in memory
//! and persisted under their own key prefixes.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AddressKind {
    Standard,
    Nonstandard,
    Virtual,
    Point,
}

impl AddressKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "standard" => Some(Self::Standard),
            "nonstandard" => Some(Self::Nonstandard),
            "virtual" => Some(Self::Virtual),
            "point" => Some(Self::Point),
            _ => None,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Nonstandard => "nonstandard",
            Self::Virtual => "virtual",
            Self::Point => "point",
        }
    }
}

/// Longest address code accepted, in bytes.
pub const MAX_ADDRESS_CODE: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddressRecord {
    pub code: String,
    pub lat: f64,
    pub lng: f64,
    pub kind: AddressKind,
    pub area: String,
    pub label: String,
    /// Dense id used in slice keys, assigned by the store on first sight;
    /// callers leave it 0.
    pub id: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistrationKind {
    Permanent,
    Temporary,
}

impl RegistrationKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "permanent" => Some(Self::Permanent),
            "temporary" => Some(Self::Temporary),
            _ => None,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::Temporary => "temporary",
        }
    }
}

/// A person's one active registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationRecord {
    pub person: u64,
    pub address: String,
    pub kind: RegistrationKind,
    pub valid_from: i64,
    pub valid_until: Option<i64>,
}

impl RegistrationRecord {
    /// Valid at `t`: `valid_from <= t < valid_until` (no end for permanent).
    pub fn valid_at(&self, t: i64) -> bool {
        self.valid_from <= t && self.valid_until.is_none_or(|u| t < u)
    }
}

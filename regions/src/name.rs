//! Names of regions and users: what a URL label and a table column can both hold.
//!
//! A name is 1 to 32 characters of lowercase ASCII letters, digits and single
//! hyphens, starting with a letter and not ending with a hyphen. That keeps it
//! a valid DNS label (RFC 1035 §2.3.1) and free of the `--` separator used by
//! app host names.

use std::fmt;

/// Longest accepted name, in bytes.
pub const MAX_LEN: usize = 32;

/// Why a name was refused; the message names the rule that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("name must start with a lowercase letter")]
    BadStart,
    #[error("name may hold only lowercase letters, digits and hyphens (found {0:?})")]
    BadChar(char),
    #[error("name may not end with a hyphen or hold two hyphens in a row")]
    BadHyphen,
}

/// A validated region or user name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Checks `raw` against the grammar above.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let first = raw.chars().next().ok_or(NameError::Empty)?;
        if raw.len() > MAX_LEN {
            return Err(NameError::TooLong);
        }
        if !first.is_ascii_lowercase() {
            return Err(NameError::BadStart);
        }
        if let Some(c) = raw.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
            return Err(NameError::BadChar(c));
        }
        if raw.ends_with('-') || raw.contains("--") {
            return Err(NameError::BadHyphen);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        let cases: &[(&str, Result<(), NameError>)] = &[
            ("sydney", Ok(())),
            ("eu-west-2", Ok(())),
            ("a", Ok(())),
            ("", Err(NameError::Empty)),
            ("Sydney", Err(NameError::BadStart)),
            ("1region", Err(NameError::BadStart)),
            ("-x", Err(NameError::BadStart)),
            ("syd ney", Err(NameError::BadChar(' '))),
            ("syd_ney", Err(NameError::BadChar('_'))),
            ("sydnéy", Err(NameError::BadChar('é'))),
            ("syd.ney", Err(NameError::BadChar('.'))),
            ("sydney-", Err(NameError::BadHyphen)),
            ("syd--ney", Err(NameError::BadHyphen)),
            (&"a".repeat(MAX_LEN), Ok(())),
            (&"a".repeat(MAX_LEN + 1), Err(NameError::TooLong)),
        ];
        for (raw, want) in cases {
            let got = Name::parse(raw).map(|_| ());
            assert_eq!(&got, want, "name {raw:?}");
        }
    }
}

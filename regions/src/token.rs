//! Secrets and the `<id>:<secret>` token codec.
//!
//! Proxy tokens (`<region-id>:<secret>`) and session tokens share one form: the id (a UUID) selects the
//! row, the secret is compared against its stored SHA-256 hash in constant time.
//! Several replicas of one region share a token.

use std::fmt;
use uuid::Uuid;

/// A secret string whose `Debug` and `Display` never print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for sending it where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this secret, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        !self.0.is_empty() && bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// Serialized only into the wire messages that carry it to its owner.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret::new(s))
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Why a proxy token could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFormatError {
    #[error("token must look like <id>:<secret>")]
    MissingSeparator,
    #[error("token id (before the colon) is not a UUID")]
    BadId,
    #[error("token secret (after the colon) is empty")]
    EmptySecret,
}

/// A parsed `<id>:<secret>` token: a proxy token or a session token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: Uuid,
    pub secret: Secret,
}

impl Token {
    pub fn parse(raw: &str) -> Result<Self, TokenFormatError> {
        let (id, secret) = raw.trim().split_once(':').ok_or(TokenFormatError::MissingSeparator)?;
        let id = Uuid::parse_str(id).map_err(|_| TokenFormatError::BadId)?;
        if secret.is_empty() {
            return Err(TokenFormatError::EmptySecret);
        }
        Ok(Self { id, secret: Secret::new(secret) })
    }

    /// The wire form, `<region-id>:<secret>`.
    pub fn encode(&self) -> Secret {
        Secret::new(format!("{}:{}", self.id, self.secret.expose()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let id = "6f1c1b0e-8d7b-4f57-9a55-1e0c8f3b2a10";
        let cases: &[(String, Result<(), TokenFormatError>)] = &[
            (format!("{id}:s3cret"), Ok(())),
            (format!(" {id}:s3cret\n"), Ok(())),
            (format!("{id}s3cret"), Err(TokenFormatError::MissingSeparator)),
            ("not-a-uuid:s3cret".into(), Err(TokenFormatError::BadId)),
            (format!("{id}:"), Err(TokenFormatError::EmptySecret)),
            (String::new(), Err(TokenFormatError::MissingSeparator)),
        ];
        for (raw, want) in cases {
            assert_eq!(&Token::parse(raw).map(|_| ()), want, "token {raw:?}");
        }
        let t = Token::parse(&format!("{id}:a:b")).unwrap();
        assert_eq!(t.secret.expose(), "a:b", "secret may itself hold a colon");
        assert_eq!(t.encode().expose(), format!("{id}:a:b"));
    }

    #[test]
    fn secrets_never_print() {
        let t = Token::parse("6f1c1b0e-8d7b-4f57-9a55-1e0c8f3b2a10:hunter2").unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
        assert_eq!(format!("{}", t.secret), "***");
    }
}

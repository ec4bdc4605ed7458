//! [`Secret`]: a string that never shows itself — `Debug` prints `<redacted>`, there is no
//! `Display`, and the only way to read it is the explicit [`Secret::expose`]. Passwords and
//! other credentials in configuration types use it so a `{:?}` in a log cannot leak them.

use serde::{Deserialize, Deserializer};

/// A secret string (password, pre-shared token).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself: call only where it is used (a hash check, a CONNECT packet).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_redacted_in_debug_output_even_inside_other_types() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Login {
            user: String,
            password: Option<Secret>,
        }
        let l = Login {
            user: "admin".into(),
            password: Some(Secret::new("hunter2")),
        };
        let shown = format!("{l:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert_eq!(l.password.unwrap().expose(), "hunter2");
    }

    #[test]
    fn a_secret_deserializes_from_a_plain_string() {
        let s: Secret = serde_json::from_str("\"p\"").unwrap();
        assert_eq!(s.expose(), "p");
    }
}

//! Sonora's identifiers as types: every id a service hands out is `<prefix>_<32 hex digits>`
//! (`ep_…`, `msg_…`, `job_…`), parsed once at the edge into a type that says what it names, so an
//! endpoint id can never be passed where a message id is expected, and an id with the wrong
//! prefix or shape is refused wherever it comes from (a request, a row, a token).
//!
//! New ids are UUIDv7 underneath: they sort by creation time, so keyset pagination by id lists
//! oldest first and index inserts stay local. The text form is stable; nothing may rely on the
//! time inside it.
//!
//! Each id type has `parse`, `Display`, `FromStr`, serde (as its text) and diesel (`Text`)
//! support. An unknown or malformed value read from the database is a deserialisation error,
//! never a silently different value. [`Tenant`] is the tenant's slug, chosen by an operator.
//!
//! No IO.

use std::{fmt, str::FromStr};

use diesel::{
    backend::Backend,
    deserialize::{self, FromSql, FromSqlRow},
    expression::AsExpression,
    pg::Pg,
    serialize::{self, Output, ToSql},
    sql_types::Text,
};

/// Why a text is not an id of the expected kind. The message names the kind and the rule, never
/// the value (an id in a request may be anything the client sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must start with {0:?}")]
    Prefix(&'static str),
    #[error("must be {0:?} followed by 32 lowercase hexadecimal digits")]
    Shape(&'static str),
    #[error("must be 1 to {MAX_TENANT_LEN} characters of letters, digits, '-', '_', '.' or ':'")]
    Tenant,
}

/// How long a tenant slug may be.
pub const MAX_TENANT_LEN: usize = 128;

fn parse_body(text: &str, prefix: &'static str) -> Result<uuid::Uuid, IdError> {
    let body = text.strip_prefix(prefix).ok_or(IdError::Prefix(prefix))?;
    if body.len() != 32 || !body.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(IdError::Shape(prefix));
    }
    uuid::Uuid::try_parse(body).map_err(|_| IdError::Shape(prefix))
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, AsExpression, FromSqlRow)]
        #[diesel(sql_type = Text)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// The text every id of this kind starts with, `_` included.
            pub const PREFIX: &'static str = concat!($prefix, "_");

            /// A new id, unique and ordered by creation time.
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }

            /// Parses the text form; anything else is an error naming the expected shape.
            pub fn parse(text: &str) -> Result<Self, IdError> {
                parse_body(text, Self::PREFIX).map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", Self::PREFIX, self.0.simple())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }

        impl ToSql<Text, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                use std::io::Write as _;
                write!(out, "{self}")?;
                Ok(serialize::IsNull::No)
            }
        }

        impl FromSql<Text, Pg> for $name {
            fn from_sql(bytes: <Pg as Backend>::RawValue<'_>) -> deserialize::Result<Self> {
                let text = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
                Ok(Self::parse(&text).map_err(|e| format!("a stored {} {e}", stringify!($name)))?)
            }
        }
    };
}

prefixed_id!(
    /// A partner endpoint (delivery-worker).
    EndpointId, "ep"
);
prefixed_id!(
    /// A published message: one event, fanned out to endpoints (delivery-worker).
    MessageId, "msg"
);
prefixed_id!(
    /// One message's delivery to one endpoint (delivery-worker).
    DeliveryId, "dlv"
);
prefixed_id!(
    /// One HTTP attempt of a delivery (delivery-worker).
    AttemptId, "att"
);
prefixed_id!(
    /// A sound-effect or music job (audio-generation).
    JobId, "job"
);
prefixed_id!(
    /// An API key (gateway).
    KeyId, "key"
);
prefixed_id!(
    /// An event handed from a service's outbox to delivery-worker; its id is the idempotency
    /// key of the hand-off.
    EventId, "evt"
);
prefixed_id!(
    /// An inbound webhook source (webhook-ingest).
    SourceId, "src"
);

/// A tenant: the owner of every resource, named by a slug an operator chooses (`acme`). It is
/// carried in internal tokens and stored beside every row a tenant owns.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, AsExpression, FromSqlRow)]
#[diesel(sql_type = Text)]
pub struct Tenant(String);

impl Tenant {
    /// 1 to 128 characters of ASCII letters, digits, `-`, `_`, `.` and `:`.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let valid = !text.is_empty()
            && text.len() <= MAX_TENANT_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(IdError::Tenant)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tenant({})", self.0)
    }
}

impl FromStr for Tenant {
    type Err = IdError;
    fn from_str(text: &str) -> Result<Self, IdError> {
        Self::parse(text)
    }
}

impl AsRef<str> for Tenant {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for Tenant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Tenant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl ToSql<Text, Pg> for Tenant {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <str as ToSql<Text, Pg>>::to_sql(&self.0, out)
    }
}

impl FromSql<Text, Pg> for Tenant {
    fn from_sql(bytes: <Pg as Backend>::RawValue<'_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
        Ok(Self::parse(&text).map_err(|e| format!("a stored tenant {e}"))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text_and_json() {
        let id = EndpointId::new();
        let text = id.to_string();
        assert!(text.starts_with("ep_") && text.len() == 35, "{text}");
        assert_eq!(EndpointId::parse(&text), Ok(id));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<EndpointId>(&json).unwrap(), id);
    }

    #[test]
    fn refuses_other_kinds_and_shapes() {
        let msg = MessageId::new().to_string();
        assert_eq!(EndpointId::parse(&msg), Err(IdError::Prefix("ep_")));
        for bad in [
            "ep_",
            "ep_123",
            "ep_0123456789ABCDEF0123456789abcdef",
            "ep_0123456789abcdef0123456789abcdeg",
            "ep_0123456789abcdef0123456789abcdef0",
            "ep_0123456789abcdef-123456789abcdef",
            "ep_0123456789abcdef0123456789abcdé",
            "EP_0123456789abcdef0123456789abcdef",
            "",
        ] {
            assert!(EndpointId::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(serde_json::from_str::<EndpointId>("\"ep_1\"").is_err());
        assert!(serde_json::from_str::<EndpointId>("42").is_err());
    }

    #[test]
    fn errors_name_the_rule_not_the_value() {
        let error = DeliveryId::parse("dlv_<script>").unwrap_err().to_string();
        assert_eq!(
            error,
            "must be \"dlv_\" followed by 32 lowercase hexadecimal digits"
        );
    }

    #[test]
    fn new_ids_sort_by_creation() {
        let ids: Vec<String> = (0..50).map(|_| MessageId::new().to_string()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn tenants_are_slugs() {
        assert_eq!(
            Tenant::parse("acme-corp.eu:1").unwrap().as_str(),
            "acme-corp.eu:1"
        );
        for bad in ["", "a b", "ü", "a/b", &"x".repeat(129)] {
            assert_eq!(Tenant::parse(bad), Err(IdError::Tenant), "{bad:?}");
        }
        assert!(Tenant::parse(&"x".repeat(128)).is_ok());
    }
}

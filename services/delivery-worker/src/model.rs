//! The closed sets of values delivery-worker stores as text: a delivery's status, an attempt's
//! outcome and an endpoint's signing scheme.
//!
//! Each is an enum with its stored text, read and written through diesel as `Text`. A stored
//! value the enum does not know is a deserialisation error, never a silently different value
//! (an unknown signing scheme read as HMAC would sign with the wrong kind of key). The wire forms
//! (proto enums) are converted in `grpc.rs`.

use std::fmt;

use diesel::{
    backend::Backend,
    deserialize::{self, FromSql, FromSqlRow},
    expression::AsExpression,
    pg::Pg,
    serialize::{self, Output, ToSql},
    sql_types::Text,
};

/// A text that is none of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a known {kind}")]
pub struct Unknown {
    pub kind: &'static str,
    pub text: String,
}

macro_rules! stored_text {
    (
        $(#[$doc:meta])*
        $name:ident ($kind:literal) {
            $($(#[$variant_doc:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, AsExpression, FromSqlRow,
        )]
        #[diesel(sql_type = Text)]
        pub enum $name {
            $($(#[$variant_doc])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The stored (and logged) text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// The value whose text this is; anything else is an error.
            pub fn parse(text: &str) -> Result<Self, Unknown> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(Unknown { kind: $kind, text: text.to_owned() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ToSql<Text, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                <str as ToSql<Text, Pg>>::to_sql(self.as_str(), out)
            }
        }

        impl FromSql<Text, Pg> for $name {
            fn from_sql(bytes: <Pg as Backend>::RawValue<'_>) -> deserialize::Result<Self> {
                let text = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
                Ok(Self::parse(&text).map_err(|e| format!("a stored {e}"))?)
            }
        }
    };
}

stored_text! {
    /// Where a delivery stands.
    DeliveryStatus("delivery status") {
        /// Waiting for its first attempt (or made due again by retry or redrive).
        Pending = "pending",
        Delivered = "delivered",
        /// Failed at least once; due again at `next_retry_at`.
        Failed = "failed",
        /// Used its last attempt without success.
        DeadLetter = "dead_letter",
    }
}

stored_text! {
    /// What one HTTP attempt came to.
    AttemptOutcome("attempt outcome") {
        /// A 2xx answer.
        Success = "success",
        /// Any other answer, or no answer for a reason other than time.
        Failure = "failure",
        /// No answer within `WEBHOOK_REQUEST_TIMEOUT`.
        Timeout = "timeout",
    }
}

stored_text! {
    /// How an endpoint's webhooks are signed (Standard Webhooks `v1` or `v1a`).
    Signing("signing scheme") {
        /// HMAC-SHA256 with a shared `whsec_` secret.
        Hmac = "hmac",
        /// Ed25519 with a `whsk_` key; partners verify with its public key.
        Ed25519 = "ed25519",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_unknown_values_are_errors() {
        for status in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(status.as_str()), Ok(*status));
        }
        for outcome in AttemptOutcome::ALL {
            assert_eq!(AttemptOutcome::parse(outcome.as_str()), Ok(*outcome));
        }
        assert_eq!(Signing::parse("ed25519"), Ok(Signing::Ed25519));
        assert_eq!(Signing::parse("hmac"), Ok(Signing::Hmac));
        // Signing used to read anything it did not know as HMAC.
        let unknown = Signing::parse("rsa").unwrap_err();
        assert_eq!(unknown.to_string(), "\"rsa\" is not a known signing scheme");
        assert!(DeliveryStatus::parse("Delivered").is_err());
        assert!(AttemptOutcome::parse("").is_err());
    }
}

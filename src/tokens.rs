//! Session tokens: JWTs signed with Ed25519 (EdDSA) that any game server can check, with the
//! public keys it needs published as a JWKS. Tokens are checked with `jsonwebtoken`; they are
//! signed with `ring` directly, with the key parsed once (the same bytes `jsonwebtoken` would
//! make, at less than half the cost). Issuing and checking a signature is pure: whether
//! a session was revoked is the store's to say ([`crate::service`] asks it).
//!
//! Claims: `sub` (the account's stable id, decimal), `name` (its registered spelling; absent
//! for a guest, which carries `guest: true` instead), `sid` (the session, random), `auth_time`
//! (when the session began, kept across refreshes), its millisecond form `auth_ms`
//! (revocations compare with it), `dl` (the device link a device's login began it from, which
//! unlinking the device revokes), `iat`, `exp`; `kid` in the header names the key.

use crate::auth::token_key::{SigningKey, VerifyKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use ring::signature::Ed25519KeyPair;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// The longest token checked, in bytes; a longer one is `malformed` without being decoded.
pub const MAX_TOKEN: usize = 4096;

/// A session token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The account's id, in decimal.
    pub sub: String,
    /// The account's spelling as registered; empty (and absent from the token) for a guest.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `true` for a guest: an account with no name yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guest: bool,
    /// The session id: random, kept across refreshes.
    pub sid: String,
    /// The device link the session began from (a device's login), kept across refreshes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dl: Option<String>,
    /// When the session began, in seconds since the epoch.
    pub auth_time: i64,
    /// When the session began, in milliseconds since the epoch.
    pub auth_ms: i64,
    pub iat: i64,
    pub exp: i64,
}

impl Claims {
    /// The account id `sub` names, if it is one.
    pub fn account_id(&self) -> Option<u64> {
        self.sub.parse().ok()
    }
}

/// Why a token is refused: the `reason` of an "invalid token" (10) reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Invalid {
    /// Not a JWT we could read: bad base64 or JSON, missing claims, too long, another
    /// algorithm's header.
    Malformed,
    /// Signed by no key we know, or not signed right.
    BadSignature,
    /// Past its `exp`.
    Expired,
    /// Its session was logged out, or every session of its account was.
    Revoked,
}

/// One session, as a token describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub account_id: u64,
    /// Empty for a guest.
    pub name: String,
    pub sid: String,
    pub auth_ms: i64,
    /// The device link it began from, if a device's login began it.
    pub link: Option<String>,
}

/// Signs tokens with one key; checks them with it and any older keys still trusted.
pub struct Tokens {
    /// The signing key, parsed once (jsonwebtoken would parse the PKCS#8 on every signature,
    /// more than half the cost of issuing a token).
    pair: Ed25519KeyPair,
    /// The header, the same for every token: base64url of `{"typ":"JWT","alg":"EdDSA","kid":…}`.
    header: String,
    decoding: HashMap<String, DecodingKey>,
    keys: Vec<VerifyKey>,
    ttl: Duration,
    validation: Validation,
}

impl Tokens {
    /// Sign with `signing`, valid for `ttl`; verify with it and with `verify` (older keys
    /// during a rotation).
    pub fn new(signing: &SigningKey, verify: Vec<VerifyKey>, ttl: Duration) -> Tokens {
        // A SigningKey holds a key that parsed: this cannot fail.
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(signing.pkcs8())
            .unwrap_or_else(|_| unreachable!("a SigningKey parses"));
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(signing.verify_key().kid.clone());
        let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap_or_default());
        let mut keys = vec![signing.verify_key().clone()];
        keys.extend(
            verify
                .into_iter()
                .filter(|k| k.kid != signing.verify_key().kid),
        );
        let decoding = keys
            .iter()
            .map(|k| (k.kid.clone(), DecodingKey::from_ed_der(&k.public)))
            .collect();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = 0;
        // Expiry is checked against the service's clock, in `check`.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Tokens {
            pair,
            header,
            decoding,
            keys,
            ttl,
            validation,
        }
    }

    /// A token for `session`, issued at `now_ms`: the token and its `exp`.
    pub fn issue(&self, session: &Session, now_ms: i64) -> (String, i64) {
        let iat = now_ms.div_euclid(1000);
        let exp = iat.saturating_add(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX));
        let claims = Claims {
            sub: session.account_id.to_string(),
            name: session.name.clone(),
            guest: session.name.is_empty(),
            sid: session.sid.clone(),
            dl: session.link.clone(),
            auth_time: session.auth_ms.div_euclid(1000),
            auth_ms: session.auth_ms,
            iat,
            exp,
        };
        // Serializing plain claims cannot fail.
        let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let mut token = format!("{}.{claims}", self.header);
        let signature = self.pair.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        (token, exp)
    }

    /// The claims of `token` if one of our keys signed it and it has not expired at `now_ms`
    /// (its `exp`, in seconds, is not before now's second).
    pub fn check(&self, token: &str, now_ms: i64) -> Result<Claims, Invalid> {
        if token.len() > MAX_TOKEN {
            return Err(Invalid::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Invalid::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(Invalid::BadSignature);
        }
        let key = header
            .kid
            .and_then(|kid| self.decoding.get(&kid))
            .ok_or(Invalid::BadSignature)?;
        match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
            Ok(data) if data.claims.exp < now_ms.div_euclid(1000) => Err(Invalid::Expired),
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidKeyFormat
                | ErrorKind::InvalidEcdsaKey => Invalid::BadSignature,
                _ => Invalid::Malformed,
            }),
        }
    }

    /// The public keys, as a JWKS (`{"keys":[...]}`), the signing key first.
    /// The kids of the keys tokens are checked with, the signing key's first.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_str()).collect()
    }

    pub fn jwks(&self) -> String {
        let keys: Vec<serde_json::Value> = self.keys.iter().map(VerifyKey::jwk).collect();
        serde_json::json!({ "keys": keys }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;

    fn now_ms() -> i64 {
        crate::clock::now_ms()
    }

    fn session() -> Session {
        Session {
            account_id: 42,
            name: "Alice".into(),
            sid: "s1".into(),
            auth_ms: now_ms() - 1500,
            link: None,
        }
    }

    #[test]
    fn a_token_carries_its_session_and_checks() {
        let key = SigningKey::generate().unwrap();
        let tokens = Tokens::new(&key, Vec::new(), Duration::from_secs(3600));
        let now = now_ms();
        let session = session();
        let (token, exp) = tokens.issue(&session, now);
        assert_eq!(exp, now / 1000 + 3600);
        let claims = tokens.check(&token, now_ms()).unwrap();
        assert_eq!(claims.account_id(), Some(42));
        assert_eq!((claims.name.as_str(), claims.sid.as_str()), ("Alice", "s1"));
        assert_eq!(claims.auth_ms, session.auth_ms);
        assert_eq!(claims.auth_time, claims.auth_ms / 1000);
        assert_eq!(claims.iat, now / 1000);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(key.verify_key().kid.as_str()));
    }

    #[test]
    fn tokens_that_are_not_ours_are_refused_with_the_reason() {
        let key = SigningKey::generate().unwrap();
        let tokens = Tokens::new(&key, Vec::new(), Duration::from_secs(3600));
        let (token, _) = tokens.issue(&session(), now_ms());
        // Another key, even under our kid.
        let stranger = Tokens::new(
            &SigningKey::generate().unwrap(),
            Vec::new(),
            Duration::from_secs(60),
        );
        let (theirs, _) = stranger.issue(&session(), now_ms());
        assert_eq!(tokens.check(&theirs, now_ms()), Err(Invalid::BadSignature));
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let their_signature = theirs.rsplit('.').next().unwrap().to_string();
        parts[2] = their_signature;
        assert_eq!(
            tokens.check(&parts.join("."), now_ms()),
            Err(Invalid::BadSignature)
        );
        // Tampered claims.
        let mut claims: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        claims["sub"] = "1".into();
        let forged = format!(
            "{}.{}.{}",
            token.split('.').next().unwrap(),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            token.rsplit('.').next().unwrap()
        );
        assert_eq!(tokens.check(&forged, now_ms()), Err(Invalid::BadSignature));
        // Expired (iat and exp an hour ago).
        let (old, _) = Tokens::new(&key, Vec::new(), Duration::from_secs(1))
            .issue(&session(), now_ms() - 3_600_000);
        assert_eq!(tokens.check(&old, now_ms()), Err(Invalid::Expired));
        // Valid through the second of its `exp`, expired from the next; an expired forgery
        // is told as a bad signature, not as expired.
        let issued = 1_700_000_000_000;
        let (token, exp) = tokens.issue(&session(), issued);
        assert_eq!(exp, 1_700_000_000 + 3600);
        assert!(tokens.check(&token, exp * 1000 + 999).is_ok());
        assert_eq!(
            tokens.check(&token, (exp + 1) * 1000),
            Err(Invalid::Expired)
        );
        assert_eq!(
            tokens.check(&forged, (exp + 1) * 1000),
            Err(Invalid::BadSignature)
        );
        // Not a token; too long; alg none; HS256 with the public key as the secret.
        for garbage in [
            "",
            "abc",
            "a.b.c",
            "!!!.@@@.###",
            &"A".repeat(MAX_TOKEN + 1),
        ] {
            assert_eq!(
                tokens.check(garbage, now_ms()),
                Err(Invalid::Malformed),
                "{garbage:.20}"
            );
        }
        let body = token.split('.').nth(1).unwrap();
        let none = format!(
            "{}.{body}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#)
        );
        assert_eq!(tokens.check(&none, now_ms()), Err(Invalid::Malformed));
        let mut hs = Header::new(Algorithm::HS256);
        hs.kid = Some(key.verify_key().kid.clone());
        let claims: Claims = serde_json::from_value(claims).unwrap();
        let confused = jsonwebtoken::encode(
            &hs,
            &claims,
            &EncodingKey::from_secret(&key.verify_key().public),
        )
        .unwrap();
        assert_eq!(
            tokens.check(&confused, now_ms()),
            Err(Invalid::BadSignature)
        );
    }

    #[test]
    fn a_token_of_exactly_max_token_bytes_is_read_one_byte_more_is_not() {
        let key = SigningKey::generate().unwrap();
        let tokens = Tokens::new(&key, Vec::new(), Duration::from_secs(3600));
        let sized = |len: usize| {
            (1..4000).find_map(|n| {
                let session = Session {
                    name: "n".repeat(n),
                    ..session()
                };
                let (token, _) = tokens.issue(&session, now_ms());
                (token.len() == len).then_some(token)
            })
        };
        let fits = sized(MAX_TOKEN).expect("a token of MAX_TOKEN bytes");
        assert!(tokens.check(&fits, now_ms()).is_ok());
        let over = sized(MAX_TOKEN + 1)
            .or_else(|| sized(MAX_TOKEN + 2))
            .unwrap();
        assert_eq!(tokens.check(&over, now_ms()), Err(Invalid::Malformed));
    }

    #[test]
    fn older_keys_keep_verifying_and_are_published() {
        let old = SigningKey::generate().unwrap();
        let new = SigningKey::generate().unwrap();
        let before = Tokens::new(&old, Vec::new(), Duration::from_secs(3600));
        let (token, _) = before.issue(&session(), now_ms());
        let after = Tokens::new(
            &new,
            vec![old.verify_key().clone()],
            Duration::from_secs(3600),
        );
        assert!(after.check(&token, now_ms()).is_ok());
        let (fresh, _) = after.issue(&session(), now_ms());
        assert_eq!(before.check(&fresh, now_ms()), Err(Invalid::BadSignature));
        let jwks: serde_json::Value = serde_json::from_str(&after.jwks()).unwrap();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(
            kids,
            [new.verify_key().kid.as_str(), old.verify_key().kid.as_str()]
        );
    }
}

//! Password hashing: argon2id, PHC strings with a random salt per user.
//!
//! How many hashes run at once is not decided here: the server computes them only on its hash
//! threads, whose number is the cap (see `server`).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::str::FromStr;

/// argon2id cost parameters: memory in KiB, iterations, lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub lanes: u32,
}

impl Default for HashParams {
    /// OWASP's recommendation: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        HashParams {
            memory_kib: 19456,
            iterations: 2,
            lanes: 1,
        }
    }
}

impl HashParams {
    /// The cheapest parameters argon2 accepts: for tests and for measuring everything else.
    pub const CHEAPEST: HashParams = HashParams {
        memory_kib: 8,
        iterations: 1,
        lanes: 1,
    };
}

/// Errors from hashing or verifying.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// `--hash-params` is not `M,T,P` or argon2 refuses the values.
    #[error("invalid hash parameters {0:?}: expected MEMORY_KIB,ITERATIONS,LANES within argon2's limits")]
    BadParams(String),
    /// A stored hash is not a PHC string argon2 can verify against: the store is damaged.
    #[error("stored password hash is unreadable: {0}")]
    BadStoredHash(argon2::password_hash::Error),
    /// argon2 itself failed (out of memory, for example).
    #[error("hashing failed: {0}")]
    Hashing(argon2::password_hash::Error),
}

impl FromStr for HashParams {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, HashError> {
        let bad = || HashError::BadParams(s.to_string());
        let numbers: Vec<u32> = s
            .split(',')
            .map(|n| n.trim().parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let [memory_kib, iterations, lanes] = numbers[..] else {
            return Err(bad());
        };
        let params = HashParams {
            memory_kib,
            iterations,
            lanes,
        };
        params.argon2_params().map_err(|_| bad())?;
        Ok(params)
    }
}

impl std::fmt::Display for HashParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{},{}", self.memory_kib, self.iterations, self.lanes)
    }
}

impl HashParams {
    fn argon2_params(&self) -> Result<Params, argon2::Error> {
        Params::new(self.memory_kib, self.iterations, self.lanes, None)
    }
}

/// Hashes new passwords with the configured parameters; verifies against any stored hash with
/// the parameters stored in it.
#[derive(Clone)]
pub struct Hasher {
    argon: Argon2<'static>,
}

impl Hasher {
    /// A hasher for `params`, which [`HashParams::from_str`] or the constants have checked.
    pub fn new(params: HashParams) -> Result<Self, HashError> {
        let params = params
            .argon2_params()
            .map_err(|_| HashError::BadParams(params.to_string()))?;
        Ok(Hasher {
            argon: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
        })
    }

    /// A PHC string for `password` with a fresh random salt.
    pub fn hash(&self, password: &str) -> Result<String, HashError> {
        let salt = SaltString::generate(&mut OsRng);
        self.argon
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(HashError::Hashing)
    }

    /// Whether `password` matches the PHC string `stored`, in constant time.
    pub fn verify(&self, password: &str, stored: &str) -> Result<bool, HashError> {
        let parsed = PasswordHash::new(stored).map_err(HashError::BadStoredHash)?;
        match self.argon.verify_password(password.as_bytes(), &parsed) {
            Ok(()) => Ok(true),
            Err(argon2::password_hash::Error::Password) => Ok(false),
            Err(e) => Err(HashError::Hashing(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_params() {
        assert_eq!(
            "19456,2,1".parse::<HashParams>().unwrap(),
            HashParams::default()
        );
        assert_eq!(
            " 8, 1 ,1".parse::<HashParams>().unwrap(),
            HashParams::CHEAPEST
        );
        for bad in ["", "1,2", "8,1,1,1", "x,1,1", "0,1,1", "8,0,1"] {
            assert!(bad.parse::<HashParams>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hashes_are_salted_and_verify_with_their_own_params() {
        let cheap = Hasher::new(HashParams::CHEAPEST).unwrap();
        let a = cheap.hash("correct horse").unwrap();
        let b = cheap.hash("correct horse").unwrap();
        assert_ne!(a, b, "salt must differ");
        assert!(a.starts_with("$argon2id$v=19$m=8,t=1,p=1$"));
        assert!(!a.contains("correct horse"));
        // A hasher with other parameters still verifies: the parameters come from the hash.
        let other = Hasher::new("16,2,1".parse().unwrap()).unwrap();
        assert!(other.verify("correct horse", &a).unwrap());
        assert!(!other.verify("wrong horse", &a).unwrap());
        assert!(matches!(
            other.verify("x", "not a hash"),
            Err(HashError::BadStoredHash(_))
        ));
    }
}

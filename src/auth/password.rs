//! Password hashing: argon2id, PHC strings with a random salt per user.
//!
//! How many hashes run at once is not decided here: login-server's workers verify cheap hashes
//! themselves, in their own memory; everything else runs under the hash threads' permits, the
//! costly stage's one permit, or the old-server stage's threads (see `crate::login`).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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
    #[error(
        "invalid hash parameters {0:?}: expected MEMORY_KIB,ITERATIONS,LANES with lanes 1 to \
         16777215, iterations at least 1, and memory at least 8 KiB per lane (at most 4 TiB)"
    )]
    BadParams(String),
    /// A stored hash is not a PHC string argon2 can verify against: the store is damaged.
    #[error("stored password hash is unreadable: {0}")]
    BadStoredHash(argon2::password_hash::Error),
    /// A stored hash (imported) asks for more work than any login may cost: see
    /// [`check_stored`].
    #[error("stored password hash is too costly to verify: {0}")]
    TooCostly(String),
    /// A stored bcrypt hash (imported) cannot be read.
    #[error("stored bcrypt hash is unreadable: {0}")]
    BadBcrypt(bcrypt::BcryptError),
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

/// Scratch memory for one argon2 computation at a time. Reusing it, instead of letting argon2
/// allocate and free its blocks per call, keeps memory at (hashes at once) x (memory cost) and
/// saves paging in fresh memory on every hash.
#[derive(Default)]
pub struct Memory(Vec<Block>);

impl Memory {
    fn blocks(&mut self, count: usize) -> &mut [Block] {
        if self.0.len() < count {
            self.0.resize(count, Block::default());
        }
        &mut self.0[..count]
    }
}

/// The most memory a stored argon2 hash may ask of a verification, in KiB (1 GiB).
pub const MAX_STORED_MEMORY_KIB: u32 = 1 << 20;

/// The most iterations a stored argon2 hash may ask.
pub const MAX_STORED_ITERATIONS: u32 = 64;

/// The highest bcrypt cost a stored hash may have (2^16 rounds: about 4 s).
pub const MAX_BCRYPT_COST: u32 = 16;

/// How many times the default parameters' memory and passes an imported argon2 hash may ask
/// at most, and how many times the configured ones a stored hash may ask before its
/// verification is costly ([`Hasher::is_costly`]).
pub const COST_FACTOR: u32 = 4;

/// The highest bcrypt cost an import accepts (2^12 rounds: about 0.25 s), and above which a
/// stored bcrypt hash is costly.
pub const MAX_IMPORT_BCRYPT_COST: u32 = 12;

/// The bcrypt cost written in `stored`, if it is a bcrypt hash that says one.
fn bcrypt_cost(stored: &str) -> Option<u32> {
    // Only the canonical form: 60 bytes, `$2b$` (or a, x, y), two digits, `$`, then 22 salt
    // and 31 hash characters of bcrypt's alphabet. The bcrypt crate reads a cost of any
    // length (`$2b$0031$...` is cost 31), so anything else must not pass a check that reads
    // two digits.
    let bytes = stored.as_bytes();
    let alphabet = |b: &u8| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'/';
    let canonical = is_bcrypt(stored)
        && bytes.len() == 60
        && bytes[4..6].iter().all(u8::is_ascii_digit)
        && bytes[6] == b'$'
        && bytes[7..].iter().all(alphabet);
    canonical.then(|| stored[4..6].parse().ok())?
}

/// Check that `stored`, an old system's hash, may be imported: argon2 within
/// [`COST_FACTOR`] times the default parameters' memory and passes (77,824 KiB, 8 passes), or
/// bcrypt up to [`MAX_IMPORT_BCRYPT_COST`]. A costlier hash would make every login of its
/// account (right password or wrong) a costly verification.
pub fn check_importable(stored: &str) -> Result<(), HashError> {
    let defaults = HashParams::default();
    within(
        stored,
        defaults.memory_kib * COST_FACTOR,
        defaults.iterations * COST_FACTOR,
        MAX_IMPORT_BCRYPT_COST,
    )
}

/// Check that `stored` (imported from an old system, say) is a hash a login can verify, at a
/// bounded cost: an argon2 PHC string within [`MAX_STORED_MEMORY_KIB`] and
/// [`MAX_STORED_ITERATIONS`], or bcrypt up to [`MAX_BCRYPT_COST`].
pub fn check_stored(stored: &str) -> Result<(), HashError> {
    within(
        stored,
        MAX_STORED_MEMORY_KIB,
        MAX_STORED_ITERATIONS,
        MAX_BCRYPT_COST,
    )
}

/// Check that `stored` is argon2 asking at most `max_memory` KiB and `max_passes` passes, or
/// bcrypt of cost at most `max_bcrypt`.
fn within(
    stored: &str,
    max_memory: u32,
    max_passes: u32,
    max_bcrypt: u32,
) -> Result<(), HashError> {
    if is_bcrypt(stored) {
        let cost = bcrypt_cost(stored).ok_or_else(|| {
            HashError::TooCostly("a bcrypt hash not in its 60-character form".into())
        })?;
        if cost > max_bcrypt {
            return Err(HashError::TooCostly(format!(
                "bcrypt cost {cost}, at most {max_bcrypt}"
            )));
        }
        return Ok(());
    }
    let parsed = PasswordHash::new(stored).map_err(HashError::BadStoredHash)?;
    let params = Params::try_from(&parsed).map_err(HashError::BadStoredHash)?;
    if params.m_cost() > max_memory || params.t_cost() > max_passes {
        return Err(HashError::TooCostly(format!(
            "m={} KiB, t={}; at most {max_memory} KiB and {max_passes} passes",
            params.m_cost(),
            params.t_cost()
        )));
    }
    Ok(())
}

/// Work (memory in KiB × iterations) up to which an argon2 verification is cheap: a fraction
/// of a millisecond, as at `--hash-params 8,1,1`; OWASP's `19456,2,1` is 38,912.
pub const CHEAP_WORK: u64 = 1024;

/// Whether verifying against `stored` is cheap (see [`CHEAP_WORK`]); bcrypt never is.
pub fn is_cheap(stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    Params::try_from(&parsed).is_ok_and(|p| cheap(&p))
}

/// Whether argon2 with `params` is cheap (see [`CHEAP_WORK`]).
fn cheap(params: &Params) -> bool {
    u64::from(params.m_cost()) * u64::from(params.t_cost()) <= CHEAP_WORK
}

/// The associated data that marks a hash of a password that breaks today's rules
/// ([`Hasher::hash_weak`]): `data=d2Vhaw` among its PHC parameters.
pub const WEAK: &[u8] = b"weak";

/// Whether a wrong guess at the password `stored` hashes must count against its account even
/// when the guess breaks today's rules: the password may break them too. So for an old
/// system's hash kept as it is (bcrypt), and for an argon2 hash marked [`WEAK`] (an old
/// account's password, moved or imported, hashed here).
pub fn is_marked_weak(stored: &str) -> bool {
    if is_bcrypt(stored) {
        return true;
    }
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    Params::try_from(&parsed).is_ok_and(|p| p.data() == WEAK)
}

/// Whether `stored` is a bcrypt hash (`$2a$`, `$2b$`, `$2x$` or `$2y$`).
pub fn is_bcrypt(stored: &str) -> bool {
    ["$2a$", "$2b$", "$2x$", "$2y$"]
        .iter()
        .any(|prefix| stored.starts_with(prefix))
}

/// Hashes new passwords with the configured parameters; verifies against any stored hash with
/// the parameters stored in it.
#[derive(Clone)]
pub struct Hasher {
    params: Params,
}

impl Hasher {
    /// A hasher for `params`, which [`HashParams::from_str`] or the constants have checked.
    pub fn new(params: HashParams) -> Result<Self, HashError> {
        let params = params
            .argon2_params()
            .map_err(|_| HashError::BadParams(params.to_string()))?;
        Ok(Hasher { params })
    }

    /// Whether hashing a new password is cheap (see [`CHEAP_WORK`]): `--hash-params 8,1,1`,
    /// say, never the default.
    pub fn is_cheap(&self) -> bool {
        cheap(&self.params)
    }

    /// A PHC string for `password` with a fresh random salt.
    pub fn hash(&self, password: &str, memory: &mut Memory) -> Result<String, HashError> {
        self.hash_with(&self.params, password, memory)
    }

    /// [`Hasher::hash`] of a password that breaks today's rules (an old account's, moved or
    /// imported), marked so in the hash itself with argon2's associated data [`WEAK`]: the mark
    /// travels with the hash through every store and tier, and says that a short guess may be
    /// this password (see [`is_marked_weak`]).
    pub fn hash_weak(&self, password: &str, memory: &mut Memory) -> Result<String, HashError> {
        let mut builder = argon2::ParamsBuilder::new();
        builder
            .m_cost(self.params.m_cost())
            .t_cost(self.params.t_cost())
            .p_cost(self.params.p_cost())
            .data(argon2::AssociatedData::new(WEAK).map_err(|e| HashError::Hashing(e.into()))?);
        let params = builder.build().map_err(|e| HashError::Hashing(e.into()))?;
        self.hash_with(&params, password, memory)
    }

    fn hash_with(
        &self,
        params: &Params,
        password: &str,
        memory: &mut Memory,
    ) -> Result<String, HashError> {
        let salt = SaltString::generate(&mut OsRng);
        let mut salt_bytes = [0u8; 64];
        let raw_salt = salt
            .as_salt()
            .decode_b64(&mut salt_bytes)
            .map_err(HashError::Hashing)?;
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password_into_with_memory(
                password.as_bytes(),
                raw_salt,
                &mut out,
                memory.blocks(params.block_count()),
            )
            .map_err(|e| HashError::Hashing(e.into()))?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(params).map_err(HashError::Hashing)?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&out).map_err(HashError::Hashing)?),
        };
        Ok(phc.to_string())
    }

    /// Whether verifying against `stored` costs more than [`COST_FACTOR`] times this hasher's
    /// memory or work (memory × passes), or is bcrypt above [`MAX_IMPORT_BCRYPT_COST`]: such a
    /// verification goes to the costly stage (one at a time, its memory given back after), so
    /// it cannot hold the hash threads that serve everyone else.
    pub fn is_costly(&self, stored: &str) -> bool {
        if is_bcrypt(stored) {
            // One not in its canonical form is refused by `verify`, on the costly stage.
            return bcrypt_cost(stored).map_or(true, |cost| cost > MAX_IMPORT_BCRYPT_COST);
        }
        let Ok(parsed) = PasswordHash::new(stored) else {
            return false;
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return false;
        };
        let work = |p: &Params| u64::from(p.m_cost()) * u64::from(p.t_cost());
        let factor = u64::from(COST_FACTOR);
        params.m_cost() > self.params.m_cost().saturating_mul(COST_FACTOR)
            || work(&params) > work(&self.params) * factor
    }

    /// Whether `stored` was made with weaker parameters than this hasher's (less memory, fewer
    /// iterations), or cannot be read: then a successful login re-hashes the password.
    pub fn is_weaker(&self, stored: &str) -> bool {
        if is_bcrypt(stored) {
            return true;
        }
        let Ok(parsed) = PasswordHash::new(stored) else {
            return true;
        };
        match Params::try_from(&parsed) {
            Ok(p) => p.m_cost() < self.params.m_cost() || p.t_cost() < self.params.t_cost(),
            Err(_) => true,
        }
    }

    /// Whether `password` matches `stored`: an argon2 PHC string (compared in constant time),
    /// or a bcrypt one (`$2b$…`, imported from an old system; [`Hasher::is_weaker`] says it is
    /// to be replaced on the next login).
    pub fn verify(
        &self,
        password: &str,
        stored: &str,
        memory: &mut Memory,
    ) -> Result<bool, HashError> {
        check_stored(stored)?;
        if is_bcrypt(stored) {
            return bcrypt::verify(password, stored).map_err(HashError::BadBcrypt);
        }
        let bad = HashError::BadStoredHash;
        let parsed = PasswordHash::new(stored).map_err(bad)?;
        let algorithm = Algorithm::try_from(parsed.algorithm).map_err(bad)?;
        let version = match parsed.version {
            Some(v) => Version::try_from(v).map_err(|e| bad(e.into()))?,
            None => Version::default(),
        };
        let params = Params::try_from(&parsed).map_err(bad)?;
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return Err(bad(argon2::password_hash::Error::PhcStringField));
        };
        let mut salt_bytes = [0u8; 64];
        let raw_salt = salt.decode_b64(&mut salt_bytes).map_err(bad)?;
        let mut out = [0u8; Output::MAX_LENGTH];
        let out = &mut out[..expected.len()];
        Argon2::new(algorithm, version, params.clone())
            .hash_password_into_with_memory(
                password.as_bytes(),
                raw_salt,
                out,
                memory.blocks(params.block_count()),
            )
            .map_err(|e| HashError::Hashing(e.into()))?;
        // `Output`'s equality is constant-time.
        Ok(Output::new(out).map_err(HashError::Hashing)? == expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weak_password_is_marked_in_its_hash_and_verifies_only_with_the_mark() {
        let hasher = Hasher::new(HashParams::CHEAPEST).unwrap();
        let memory = &mut Memory::default();
        let weak = hasher.hash_weak("1234", memory).unwrap();
        assert!(weak.contains(",data=d2Vhaw$"), "{weak}");
        assert!(is_marked_weak(&weak));
        assert!(hasher.verify("1234", &weak, memory).unwrap());
        assert!(!hasher.verify("1235", &weak, memory).unwrap());
        // The mark is part of what is hashed: taken off, the hash no longer verifies.
        let unmarked = weak.replace(",data=d2Vhaw", "");
        assert!(!is_marked_weak(&unmarked));
        assert!(!hasher.verify("1234", &unmarked, memory).unwrap());
        let strong = hasher.hash("a-long-password", memory).unwrap();
        assert!(!is_marked_weak(&strong));
        assert!(is_marked_weak(&bcrypt::hash("1234", 4).unwrap()));
        // Its parameters are the hasher's: not weaker, not costly, cheap as any.
        assert!(!hasher.is_weaker(&weak) && !hasher.is_costly(&weak) && is_cheap(&weak));
    }

    #[test]
    fn a_bcrypt_cost_is_read_only_from_the_canonical_form() {
        // bcrypt's alphabet: letters, digits, `.` and `/`.
        let tail = "abcdefghijklmnopqrst./ABCDEFGHIJKLMNOPQRSTUVWXYZ01234";
        assert_eq!(tail.len(), 53);
        let at = |cost: &str| format!("$2b${cost}${tail}");
        assert_eq!(bcrypt_cost(&at("12")), Some(12));
        assert!(check_importable(&at("12")).is_ok());
        // The bcrypt crate reads `0031` as 31: never as 0 here, and never verified.
        for bad in [
            at("0031"),
            at("031"),
            at("1"),
            format!("{}x", at("12")),
            at("12").replace('a', "!"),
        ] {
            assert_eq!(bcrypt_cost(&bad), None, "{bad}");
            assert!(check_importable(&bad).is_err(), "{bad}");
            assert!(check_stored(&bad).is_err(), "{bad}");
            let hasher = Hasher::new(HashParams::CHEAPEST).unwrap();
            assert!(hasher.is_costly(&bad), "{bad}");
            assert!(
                hasher.verify("x", &bad, &mut Memory::default()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_small_argon2_work_is_cheap() {
        let at = |m: u32, t: u32| {
            format!("$argon2id$v=19$m={m},t={t},p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA")
        };
        assert!(is_cheap(&at(8, 1)));
        assert!(is_cheap(&at(1024, 1)));
        assert!(is_cheap(&at(512, 2)));
        assert!(!is_cheap(&at(1025, 1)));
        assert!(!is_cheap(&at(513, 2)));
        assert!(!is_cheap(&at(19456, 2)));
        let bcrypt = "$2b$04$abcdefghijklmnopqrstuu5Qp1eQ1V0I2X2kvX6Jt3lH1pJm6fJ0y";
        assert!(!is_cheap(bcrypt));
        assert!(!is_cheap("not a hash"));
        let hasher = |text: &str| Hasher::new(text.parse().unwrap()).unwrap();
        assert!(hasher("8,1,1").is_cheap());
        assert!(hasher("512,2,1").is_cheap());
        assert!(!hasher("513,2,1").is_cheap());
        assert!(!Hasher::new(HashParams::default()).unwrap().is_cheap());
    }

    #[test]
    fn costly_means_beyond_four_times_the_configured_memory_or_work() {
        let at = |m: u32, t: u32| {
            format!("$argon2id$v=19$m={m},t={t},p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA")
        };
        let hasher = Hasher::new(HashParams::default()).unwrap(); // 19456 KiB, 2 passes
        assert!(!hasher.is_costly(&at(19456, 2)));
        assert!(
            !hasher.is_costly(&at(4 * 19456, 2)),
            "4x the memory, 4x the work"
        );
        assert!(
            hasher.is_costly(&at(4 * 19456 + 1, 1)),
            "more than 4x the memory"
        );
        assert!(!hasher.is_costly(&at(19456, 8)), "4x the work");
        assert!(hasher.is_costly(&at(19456, 9)), "more than 4x the work");
        assert!(
            hasher.is_costly(&at(4 * 19456, 8)),
            "at the import cap: 16x the work"
        );
        assert!(!hasher.is_costly(&at(8, 1)));
        let bcrypt = |cost: u32| {
            format!("$2b${cost:02}$abcdefghijklmnopqrstuu5Qp1eQ1V0I2X2kvX6Jt3lH1pJm6fJ0y")
        };
        assert!(!hasher.is_costly(&bcrypt(12)));
        assert!(hasher.is_costly(&bcrypt(13)));
        assert!(!hasher.is_costly("not a hash"));
        // Imports stop at 4x the defaults and bcrypt 12.
        assert!(check_importable(&at(4 * 19456, 8)).is_ok());
        assert!(check_importable(&at(4 * 19456 + 1, 8)).is_err());
        assert!(check_importable(&at(4 * 19456, 9)).is_err());
        assert!(check_importable(&bcrypt(12)).is_ok());
        assert!(check_importable(&bcrypt(13)).is_err());
        assert!(check_importable("$2b$xx$abc").is_err());
    }

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
        let memory = &mut Memory::default();
        let cheap = Hasher::new(HashParams::CHEAPEST).unwrap();
        let a = cheap.hash("correct horse", memory).unwrap();
        let b = cheap.hash("correct horse", memory).unwrap();
        assert_ne!(a, b, "salt must differ");
        assert!(a.starts_with("$argon2id$v=19$m=8,t=1,p=1$"));
        assert!(!a.contains("correct horse"));
        // A hasher with other parameters still verifies: the parameters come from the hash.
        let other = Hasher::new("16,2,1".parse().unwrap()).unwrap();
        assert!(other.verify("correct horse", &a, memory).unwrap());
        assert!(!other.verify("wrong horse", &a, memory).unwrap());
        assert!(matches!(
            other.verify("x", "not a hash", memory),
            Err(HashError::BadStoredHash(_))
        ));
    }

    #[test]
    fn imported_bcrypt_hashes_verify_and_are_weaker() {
        let hasher = Hasher::new(HashParams::CHEAPEST).unwrap();
        let memory = &mut Memory::default();
        let stored = bcrypt::hash("old-secret", 4).unwrap();
        assert!(is_bcrypt(&stored));
        assert!(hasher.verify("old-secret", &stored, memory).unwrap());
        assert!(!hasher.verify("old-secreT", &stored, memory).unwrap());
        assert!(hasher.is_weaker(&stored));
        assert!(hasher.verify("x", "$2b$04$garbage", memory).is_err());
        assert!(!is_bcrypt("$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA"));
        // Costs beyond any login's are refused, not computed.
        let costly = "$2b$31$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234";
        assert!(matches!(
            hasher.verify("x", costly, memory),
            Err(HashError::TooCostly(_))
        ));
        let huge = "$argon2id$v=19$m=4294967295,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
        assert!(matches!(check_stored(huge), Err(HashError::TooCostly(_))));
        assert!(check_stored(&stored).is_ok());
    }

    #[test]
    fn agrees_with_the_argon2_crates_own_phc_hashing() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let memory = &mut Memory::default();
        let params = "64,2,2".parse::<HashParams>().unwrap();
        let ours = Hasher::new(params)
            .unwrap()
            .hash("pw-123456", memory)
            .unwrap();
        let reference = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            params.argon2_params().unwrap(),
        );
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(reference.verify_password(b"pw-123456", &parsed).is_ok());
        let salt = SaltString::generate(&mut OsRng);
        let theirs = reference
            .hash_password(b"pw-123456", &salt)
            .unwrap()
            .to_string();
        let hasher = Hasher::new(HashParams::CHEAPEST).unwrap();
        assert!(hasher.verify("pw-123456", &theirs, memory).unwrap());
        assert!(!hasher.verify("pw-1234567", &theirs, memory).unwrap());
    }
}

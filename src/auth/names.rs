//! Username and password rules, and the case folding that makes names unique without regard
//! to case.

/// The limits a registration must meet. Logins are checked against them too, so a request that
/// cannot name an account is answered without touching the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct Rules {
    /// Username length in characters (not bytes), inclusive: MIN,MAX. Defaults to 3,32.
    #[arg(
        long, value_name = "MIN,MAX",
        env = "LOGIN_SERVER_USERNAME_CHARS",
        default_value = "3,32",
        value_parser = crate::config::range
    )]
    pub username_chars: (usize, usize),
    /// Password length in bytes of UTF-8, inclusive: MIN,MAX. Defaults to 8,1024.
    #[arg(
        long, value_name = "MIN,MAX",
        env = "LOGIN_SERVER_PASSWORD_BYTES",
        default_value = "8,1024",
        value_parser = crate::config::range
    )]
    pub password_bytes: (usize, usize),
}

impl Default for Rules {
    fn default() -> Self {
        crate::config::defaults()
    }
}

impl Rules {
    /// Letters of any script, ASCII digits, `_`, `-` and `.`, within the length limits.
    pub fn username_ok(&self, name: &str) -> bool {
        let (min, max) = self.username_chars;
        let mut count = 0;
        for c in name.chars() {
            count += 1;
            if count > max || !(c.is_alphabetic() || c.is_ascii_digit() || "_-.".contains(c)) {
                return false;
            }
        }
        count >= min
    }

    /// Any UTF-8 within the length limits.
    pub fn password_ok(&self, password: &str) -> bool {
        let (min, max) = self.password_bytes;
        (min..=max).contains(&password.len())
    }
}

/// The key under which a name is unique: `Alice`, `ALICE` and `alice` are one account.
pub fn fold(name: &str) -> String {
    name.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_of_any_script_within_limits() {
        let rules = Rules::default();
        for ok in [
            "abc",
            "Alice_01",
            "jean-luc.p",
            "Żółw",
            "名前です",
            &"x".repeat(32),
        ] {
            assert!(rules.username_ok(ok), "{ok}");
        }
        for bad in [
            "ab",
            "",
            "a b",
            "semi;colon",
            "emoji🙂",
            "tab\tx",
            &"x".repeat(33),
        ] {
            assert!(!rules.username_ok(bad), "{bad}");
        }
    }

    #[test]
    fn password_length_counts_bytes() {
        let rules = Rules::default();
        assert!(rules.password_ok("12345678"));
        assert!(!rules.password_ok("1234567"));
        assert!(rules.password_ok(&"é".repeat(512)));
        assert!(!rules.password_ok(&"é".repeat(513)));
    }

    #[test]
    fn folding_ignores_case_in_any_script() {
        assert_eq!(fold("Alice"), fold("aLICE"));
        assert_eq!(fold("ŻÓŁW"), "żółw");
    }
}

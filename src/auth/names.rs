//! Username and password rules, and what makes two names the same.
//!
//! Names that look the same must be the same (RFC 8265's UsernameCaseMapped, Unicode UTS #39):
//! - [`fold`] (NFKC, then full case folding) is the uniqueness key: `Alice`, `ALICE`, `ａｌｉｃｅ`,
//!   `𝐚𝐥𝐢𝐜𝐞` are one account, and so are `straße` and `STRASSE`. It is stable across Unicode
//!   versions.
//! - [`Rules::username_ok`] refuses, for new registrations, default-ignorable and invisible code
//!   points (Hangul fillers, say), characters UTS #39 does not allow in identifiers, and names
//!   that mix scripts beyond UTS #39's "highly restrictive" level (Latin with Han and Kana, say,
//!   but not Cyrillic `а` among Latin letters).
//! - [`skeleton`] (UTS #39) makes whole-script look-alikes the same: a registration whose
//!   skeleton matches an existing account's is refused as taken. It is a refusal check with
//!   its own index, not the key: it changes with Unicode's confusables data ([`SKELETON_DATA`]),
//!   and the store rebuilds it when that changes.
//!
//! Names that registered under older rules, were imported, or moved from the old server
//! still log in, whatever today's rules say: a login is refused without a lookup only when
//! [`could_name_an_account`] says no account can have its name.

use unicode_normalization::UnicodeNormalization;
use unicode_security::{GeneralSecurityProfile, RestrictionLevel, RestrictionLevelDetection};

/// The version of the confusables data and of the [`skeleton`] recipe: stored skeletons made
/// with another are rebuilt.
pub const SKELETON_DATA: (u64, u64, u64, u32) = {
    let (major, minor, update) = unicode_security::UNICODE_VERSION;
    (major, minor, update, 4)
};

/// The limits a registration (and a new password) must meet. Logins are not checked against
/// them: see [`could_name_an_account`].
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
    /// Whether a new registration may take `name`: within the length limits (in characters of
    /// its NFKC form), letters of any script, ASCII digits, `_`, `-` and `.`, nothing invisible
    /// or disallowed in identifiers, and no mix of scripts beyond UTS #39's "highly
    /// restrictive".
    pub fn username_ok(&self, name: &str) -> bool {
        let (min, max) = self.username_chars;
        let normalized: String = name.nfkc().collect();
        let mut count = 0;
        for c in normalized.chars() {
            count += 1;
            let shape = c.is_alphabetic() || c.is_ascii_digit() || "_-.".contains(c);
            if count > max || !shape || !c.identifier_allowed() {
                return false;
            }
        }
        count >= min
            && normalized.as_str().detect_restriction_level() <= RestrictionLevel::HighlyRestrictive
    }

    /// Any UTF-8 within the length limits, counted in its NFC form (what is hashed), so that
    /// one password is within them however it was typed.
    pub fn password_ok(&self, password: &str) -> bool {
        let (min, max) = self.password_bytes;
        // NFC never grows a string by more than 3x; anything longer cannot fit.
        if password.len() > max.saturating_mul(3) {
            return false;
        }
        (min..=max).contains(&normalize_password(password).len())
    }
}

/// The key under which a name is unique: NFKC, full case folding, NFKC again (so the result is
/// normalized). `Alice`, `ＡＬＩＣＥ` and `alice` are one account; so are `straße` and `STRASSE`.
/// An ASCII name is its lower case: NFKC leaves ASCII as it is, and folds only `A`-`Z` in it.
pub fn fold(name: &str) -> String {
    if name.is_ascii() {
        return name.to_ascii_lowercase();
    }
    fold_unicode(name)
}

/// [`fold`] done in full.
fn fold_unicode(name: &str) -> String {
    let compatible: String = name.nfkc().collect();
    caseless::default_case_fold_str(&compatible)
        .nfkc()
        .collect()
}

/// The UTS #39 confusable skeleton of a name, made case-blind: the skeleton of its NFKC form
/// (where capital `I` is still a look-alike of `l`), folded, and skeletonised again. Names
/// whose skeletons match look alike: Cyrillic `аdmin` and Latin `admin`, `aIice` and `alice`.
///
/// Turkish pairs its i's apart from other languages: `İ` (dotted capital) is the capital of
/// `i`, and `I` the capital of `ı` (dotless small). Full case folding knows only the other
/// languages' pairs: it makes `İstanbul` `i̇stanbul` (an `i` with a combining dot), a name apart
/// from `istanbul`. So the skeleton takes `İ` as `i` first: `İstanbul` looks like `istanbul`,
/// and a new registration of one is refused while the other exists. `ı` stays what the
/// confusables data makes it, `i`: `admın` looks like `admin`. One skeleton per name must
/// choose, and it chooses the eye over Turkish case: `ızmir` is refused beside `izmir`, not
/// beside `Izmir` (recipe 3 took `ı` as `I` and let `admın` register beside `admin`). Pairs
/// registered before both keep logging in; `account-db admin list --conflicts` lists them.
pub fn skeleton(name: &str) -> String {
    let turkish_i = |c| match c {
        '\u{130}' => 'i',
        c => c,
    };
    let dotted: String = name.chars().map(turkish_i).collect();
    let compatible: String = dotted.nfkc().collect();
    let shapes: String = unicode_security::skeleton(&compatible).collect();
    unicode_security::skeleton(&fold(&shapes)).collect()
}

/// Whether `c` shows as nothing, or breaks or reorders the text around it: a control
/// character, a line or paragraph separator, a format character Unicode says to ignore
/// (Default_Ignorable_Code_Point: zero-width spaces, a byte order mark, joiners, direction
/// marks, tags), an interlinear annotation mark, a noncharacter, or a private-use character.
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{2028}' | '\u{2029}'
            | '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}' | '\u{1160}'
            | '\u{17b4}' | '\u{17b5}' | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}' | '\u{feff}' | '\u{ffa0}' | '\u{fff0}'..='\u{fffb}'
            | '\u{fdd0}'..='\u{fdef}' | '\u{e000}'..='\u{f8ff}'
            | '\u{1bca0}'..='\u{1bca3}' | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0000}'..='\u{e0fff}' | '\u{f0000}'..='\u{10ffff}')
        || (c as u32 & 0xfffe) == 0xfffe
}

/// The longest name any account can have, in bytes (import refuses longer ones).
pub const MAX_NAME: usize = 255;

/// Whether some account could be named `name`: not empty, at most [`MAX_NAME`] bytes, no
/// control characters. Looser than any rule registrations were ever checked against, since
/// imported and old-server names log in too; a login under any other name is answered without
/// a lookup.
pub fn could_name_an_account(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && !name.chars().any(char::is_control)
}

/// A password as it is hashed and verified: NFC, so that the same password typed on another
/// keyboard or system (composed or decomposed accents) is the same (NIST SP 800-63B).
pub fn normalize_password(password: &str) -> String {
    password.nfc().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_characters_are_told_from_visible_ones() {
        for c in [
            '\n',
            '\u{7f}',
            '\u{85}',
            '\u{2028}',
            '\u{200b}',
            '\u{202e}',
            '\u{2066}',
            '\u{feff}',
            '\u{2060}',
            '\u{ad}',
            '\u{fff9}',
            '\u{fdd0}',
            '\u{fffe}',
            '\u{1fffe}',
            '\u{e000}',
            '\u{e0041}',
            '\u{10ffff}',
            '\u{3164}',
            '\u{fe0f}',
        ] {
            assert!(is_invisible(c), "{:04x}", c as u32);
        }
        for c in [
            'a',
            'Z',
            '0',
            ' ',
            '\u{a0}',
            '\u{131}',
            '\u{e9}',
            '\u{65e5}',
            '\u{fffc}',
            '\u{1f600}',
        ] {
            assert!(!is_invisible(c), "{:04x}", c as u32);
        }
    }

    #[test]
    fn ascii_names_fold_as_in_full() {
        let ascii: Vec<char> = (0u8..128).map(char::from).collect();
        for a in &ascii {
            for b in &ascii {
                let name: String = [*a, *b, 'Q', 'z'].iter().collect();
                assert_eq!(fold(&name), fold_unicode(&name), "{name:?}");
            }
        }
        // Not ASCII: folded in full, whatever ASCII is around it.
        assert_eq!(fold("ＡＬＩＣＥ"), "alice");
        assert_eq!(fold("STRAßE"), fold("strasse"));
    }

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

    #[test]
    fn names_that_look_the_same_are_the_same() {
        let same = [
            ("가ab", "\u{1100}\u{1161}ab"),
            ("𝐫𝐨𝐨𝐭", "root"),
            ("ｂｏｂ12", "bob12"),
            ("ﬀabc", "ffabc"),
            ("straße", "STRASSE"),
            ("οδοσ", "ΟΔΟΣ"),
            ("οδος", "ΟΔΟΣ"),
        ];
        for (a, b) in same {
            assert_eq!(fold(a), fold(b), "{a} and {b}");
        }
        assert_eq!(skeleton("\u{0430}dmin"), skeleton("admin"), "Cyrillic а");
        assert_eq!(skeleton("aIice"), skeleton("alice"), "capital I");
        // Turkish dotted capital I and dotless i: look-alikes of i, though they fold apart.
        assert_ne!(fold("\u{130}stanbul"), fold("istanbul"));
        assert_eq!(skeleton("\u{130}stanbul"), skeleton("istanbul"), "İ");
        assert_eq!(skeleton("\u{130}STANBUL"), skeleton("istanbul"));
        assert_eq!(skeleton("\u{131}stanbul"), skeleton("istanbul"), "ı");
        assert_eq!(skeleton("adm\u{131}n"), skeleton("admin"), "ı");
        assert_eq!(skeleton("P\u{131}NNY"), skeleton("pinny"));
        assert_ne!(
            skeleton("\u{131}zmir"),
            skeleton("Izmir"),
            "the eye over Turkish case"
        );
        // A dot is no look-alike of its absence: İ and I stay apart, as their folds do.
        assert_ne!(skeleton("\u{130}stanbul"), skeleton("Istanbul"));
        assert_eq!(skeleton("paypaI"), skeleton("paypal"));
        assert_eq!(
            skeleton("\u{0410}\u{0412}\u{0421}"),
            skeleton("abc"),
            "Cyrillic АВС"
        );
        assert_eq!(
            skeleton("\u{0441}\u{043e}\u{0441}\u{043e}"),
            skeleton("coco")
        );
        assert_ne!(skeleton("alice"), skeleton("bob"));
    }

    #[test]
    fn invisible_and_mixed_script_names_are_refused() {
        let rules = Rules::default();
        for bad in [
            "dave\u{3164}",
            "dave\u{115F}",
            "dave\u{1160}",
            "dave\u{FFA0}",
            "\u{3164}\u{3164}\u{3164}",
            "da\u{200B}ve",
            "\u{0430}dmin", // Cyrillic а among Latin letters
            "abcαβγ",       // Latin and Greek
        ] {
            assert!(!rules.username_ok(bad), "{bad:?}");
        }
        for ok in [
            "admin",
            "админ",
            "日本語name",
            "가나다",
            "jean-luc.p",
            "Żółw",
        ] {
            assert!(rules.username_ok(ok), "{ok:?}");
        }
        // Refused now, but such a name may have registered before: logins still look it up.
        assert!(!rules.username_ok("\u{0430}dmin") && could_name_an_account("\u{0430}dmin"));
        assert!(
            could_name_an_account("a b"),
            "imported names may have spaces"
        );
        // Whatever registers can log in with the same spelling.
        for registered in ["bob²x", "carol１", &"e\u{301}".repeat(20), "ﬀabc"] {
            assert!(rules.username_ok(registered), "{registered:?}");
            assert!(could_name_an_account(registered), "{registered:?}");
        }
        // No account can have these: answered without a lookup.
        for never in ["", "a\nb", "tab\there", &"x".repeat(MAX_NAME + 1)] {
            assert!(!could_name_an_account(never), "{never:?}");
        }
        assert!(could_name_an_account(&"x".repeat(MAX_NAME)));
    }

    #[test]
    fn every_allowed_shape_and_both_length_bounds() {
        let rules = Rules::default(); // 3 to 32 characters
        for check in [Rules::username_ok] {
            for ok in [
                "abc",
                "a_1",
                "a-1",
                "a.1",
                "a1_",
                "A_b-c.9",
                &"x".repeat(32),
            ] {
                assert!(check(&rules, ok), "{ok:?}");
            }
            for bad in ["ab", &"x".repeat(33), "a b", "ab!", "a\u{200B}b", "1 2"] {
                assert!(!check(&rules, bad), "{bad:?}");
            }
        }
        // Counted in NFKC, what a registration is checked in.
        assert!(
            rules.username_ok(&"e\u{301}".repeat(20)),
            "40 characters, 20 in NFKC"
        );
        assert!(
            !rules.username_ok(&"e\u{301}".repeat(40)),
            "80 characters, 40 in NFKC"
        );
    }

    #[test]
    fn password_length_is_counted_as_hashed() {
        let rules = Rules::default();
        // One password, one answer, however it was typed: 9 bytes decomposed, 6 composed.
        assert!(!rules.password_ok(&"e\u{301}".repeat(3)));
        assert!(!rules.password_ok("\u{e9}\u{e9}\u{e9}"));
        assert!(
            rules.password_ok(&"e\u{301}".repeat(500)),
            "1500 bytes typed, 1000 hashed"
        );
        assert!(!rules.password_ok(&"x".repeat(1025)));
    }

    #[test]
    fn passwords_are_compared_in_nfc() {
        assert_eq!(normalize_password("e\u{301}t\u{e9}"), "\u{e9}t\u{e9}");
        assert_eq!(normalize_password("plain"), "plain");
    }
}

//! Image Builder's semantic versions: `name/major.minor.patch/build`,
//! with build numbers assigned by kiln and `x` wildcards that may only
//! stand to the right of fixed fields (`1.x.x`, never `x.2.3`).

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a version of the form major.minor.patch ({why})")]
pub struct VersionError {
    pub text: String,
    pub why: &'static str,
}

impl FromStr for Version {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| VersionError {
            text: s.to_string(),
            why,
        };
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() != 3 {
            return Err(err("three numbers separated by dots"));
        }
        let n = |p: &str| {
            p.parse::<u64>()
                .map_err(|_| err("each part is a whole number"))
        };
        Ok(Version {
            major: n(parts[0])?,
            minor: n(parts[1])?,
            patch: n(parts[2])?,
        })
    }
}

impl Version {
    /// The AWS pipeline's version bump: the last field plus one.
    pub fn bump_patch(self) -> Version {
        Version {
            patch: self.patch + 1,
            ..self
        }
    }
}

/// A version pattern: fixed fields on the left, `x` on the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionPattern {
    fields: [Option<u64>; 3],
}

impl FromStr for VersionPattern {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| VersionError {
            text: s.to_string(),
            why,
        };
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() != 3 {
            return Err(err("three fields separated by dots"));
        }
        let mut fields = [None; 3];
        let mut wild = false;
        for (i, p) in parts.iter().enumerate() {
            if p.eq_ignore_ascii_case("x") {
                wild = true;
            } else if wild {
                return Err(err(
                    "wildcards resolve right to left: an x may only be followed by x",
                ));
            } else {
                fields[i] = Some(
                    p.parse()
                        .map_err(|_| err("each field is a whole number or x"))?,
                );
            }
        }
        Ok(VersionPattern { fields })
    }
}

impl VersionPattern {
    pub fn matches(&self, v: &Version) -> bool {
        let got = [v.major, v.minor, v.patch];
        self.fields
            .iter()
            .zip(got)
            .all(|(want, have)| want.is_none_or(|w| w == have))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_resolve_right_to_left() {
        let v: Version = "1.2.3".parse().unwrap();
        assert!("1.x.x".parse::<VersionPattern>().unwrap().matches(&v));
        assert!("1.2.x".parse::<VersionPattern>().unwrap().matches(&v));
        assert!(!"1.3.x".parse::<VersionPattern>().unwrap().matches(&v));
        assert!("x.x.x".parse::<VersionPattern>().unwrap().matches(&v));
        assert!("x.2.3".parse::<VersionPattern>().is_err());
        assert!("1.2".parse::<Version>().is_err());
        assert_eq!(v.bump_patch().to_string(), "1.2.4");
    }
}

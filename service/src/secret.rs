//! Comparing secrets (the cluster secret, client tokens) without leaking, through the
//! time a comparison takes, where a guess goes wrong.

/// Compares a presented secret with the configured one in time independent of where
/// they differ, so the secret cannot be guessed byte by byte from response times.
pub fn secret_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::secret_matches;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(secret_matches("s3cret", "s3cret"));
        assert!(!secret_matches("s3cres", "s3cret"));
        assert!(!secret_matches("s3cre", "s3cret"));
        assert!(!secret_matches("s3cret+", "s3cret"));
        assert!(!secret_matches("", "s3cret"));
    }
}

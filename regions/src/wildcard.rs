//! The wildcard access URL pattern, `*.<base host>[:port]`, e.g. `*.sydney.localhost:7081`.

/// Checks a wildcard pattern: `*.` then a host of at least one dot-free label,
/// optionally `:port`.
pub fn check(pattern: &str) -> Result<(), &'static str> {
    let rest = pattern.strip_prefix("*.").ok_or("must start with \"*.\"")?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    if host.is_empty() || host.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return Err("base host has an empty or over-long label");
    }
    if !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        return Err("base host may hold only letters, digits, hyphens and dots");
    }
    if let Some(p) = port {
        p.parse::<u16>().ok().filter(|p| *p != 0).ok_or("port is not a number from 1 to 65535")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn patterns() {
        for ok in ["*.localhost", "*.sydney.localhost:7081", "*.apps.example.com"] {
            assert_eq!(super::check(ok), Ok(()), "{ok}");
        }
        for bad in ["apps.example.com", "*.", "*..com", "*.a_b.com", "*.x.com:0", "*.x.com:99999", "*.x.com:", "**.x"] {
            assert!(super::check(bad).is_err(), "{bad}");
        }
    }
}

//! The policy's glob patterns (callers, tenants, `api` paths): `*` within one `/`-separated
//! segment, `**` across segments; matched without backtracking (`policy.rs` module docs).

/// A glob: `*` within one `/`-separated segment, `**` across segments (module docs).
#[derive(Debug, Clone)]
pub(super) struct Pattern {
    /// Literal text and wildcards, in order; no two wildcards are adjacent (a run of `*`
    /// is one token) and no literal is empty.
    pub(super) tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Token {
    Literal(String),
    /// `*`: any run without `/`.
    Segment,
    /// `**`: any run.
    Any,
}

impl Pattern {
    pub(super) fn new(p: &str) -> Self {
        let mut tokens = Vec::new();
        let mut rest = p;
        while !rest.is_empty() {
            let stars = rest.len() - rest.trim_start_matches('*').len();
            if stars > 0 {
                tokens.push(if stars == 1 { Token::Segment } else { Token::Any });
                rest = &rest[stars..];
            } else {
                let end = rest.find('*').unwrap_or(rest.len());
                tokens.push(Token::Literal(rest[..end].to_owned()));
                rest = &rest[end..];
            }
        }
        Self { tokens }
    }

    /// Whether every string that starts with `prefix` matches: the pattern is `Q*` (a
    /// literal, then one run of stars, nothing after) with `prefix` starting with `Q`.
    /// Used for tenant ids, which have no `/`, so `*` and `**` agree here.
    pub(super) fn covers_prefix(&self, prefix: &str) -> bool {
        match self.tokens.as_slice() {
            [Token::Segment | Token::Any] => true,
            [Token::Literal(q), Token::Segment | Token::Any] => prefix.starts_with(q.as_str()),
            _ => false,
        }
    }

    /// Whether `s` matches. Tracks the set of positions in `s` the tokens so far can end
    /// at, one token at a time: O(len(s) × tokens), no backtracking. Positions are byte
    /// offsets; `/` is ASCII, so a `*` never stops inside a multi-byte character in a way
    /// a literal could then match.
    pub(super) fn matches(&self, s: &str) -> bool {
        if let [Token::Literal(l)] = self.tokens.as_slice() {
            return l == s;
        }
        let b = s.as_bytes();
        let n = b.len();
        let mut at = vec![false; n + 1];
        at[0] = true;
        for token in &self.tokens {
            let mut next = vec![false; n + 1];
            match token {
                Token::Literal(l) => {
                    let l = l.as_bytes();
                    for i in (0..=n).filter(|&i| at[i]) {
                        if b[i..].starts_with(l) {
                            next[i + l.len()] = true;
                        }
                    }
                }
                Token::Segment => {
                    // From each reachable position, every position up to the next `/`.
                    let mut open = false;
                    for i in 0..=n {
                        open |= at[i];
                        next[i] = open;
                        if i < n && b[i] == b'/' {
                            open = false;
                        }
                    }
                }
                Token::Any => {
                    if let Some(first) = at.iter().position(|&r| r) {
                        next[first..].iter_mut().for_each(|r| *r = true);
                    }
                }
            }
            at = next;
            if !at.contains(&true) {
                return false;
            }
        }
        at[n]
    }
}

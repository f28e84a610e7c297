//! Topic paths, wildcard patterns, and a matcher for many patterns.
//!
//! A topic is a path of segments separated by `/`: `blocks/eu/shard-3`.
//! A pattern is a topic path whose segments may be wildcards:
//!
//! - `*` matches exactly one segment: `blocks/*/shard-3` matches
//!   `blocks/eu/shard-3` but not `blocks/eu/x/shard-3`;
//! - `**`, only as the last segment, matches one or more segments:
//!   `blocks/**` matches `blocks/eu` and `blocks/eu/shard-3`, not `blocks`.
//!
//! A pattern without wildcards is a concrete topic and matches only itself.
//! One leading `/` is allowed (many libp2p networks name topics
//! `/eth2/...`); it is part of the first segment, so `/a/b` and `a/b` are
//! different topics. The first segment `_bh` is reserved for the protocol's
//! own topics.

use std::{collections::HashMap, fmt, str::FromStr};

/// Longest topic or pattern, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;
/// Most segments in a topic or pattern.
pub const MAX_SEGMENTS: usize = 16;
/// The reserved first segment.
pub const RESERVED: &str = "_bh";

/// Why a topic or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// Empty string.
    #[error("empty topic")]
    Empty,
    /// Too long.
    #[error("topic is {len} bytes, more than {MAX_TOPIC_LEN}")]
    TooLong { len: usize },
    /// Too many segments.
    #[error("topic has {count} segments, more than {MAX_SEGMENTS}")]
    TooDeep { count: usize },
    /// `a//b` or a trailing `/`.
    #[error("empty segment at position {index} in {topic:?}")]
    EmptySegment { topic: String, index: usize },
    /// Control characters or whitespace.
    #[error("invalid character {ch:?} in {topic:?}")]
    BadChar { topic: String, ch: char },
    /// A wildcard where a concrete topic is needed, or a `*` inside a
    /// segment, or `**` before the last segment.
    #[error("misplaced wildcard in {topic:?}: {reason}")]
    Wildcard { topic: String, reason: &'static str },
    /// The first segment is reserved.
    #[error("topics starting with {RESERVED:?} are reserved")]
    Reserved,
}

/// A segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Literal(Box<str>),
    /// `*`
    One,
    /// `**` (last only)
    Rest,
}

fn split(s: &str, allow_wildcards: bool) -> Result<Vec<Segment>, TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { len: s.len() });
    }
    if let Some(ch) = s.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(TopicError::BadChar {
            topic: s.into(),
            ch,
        });
    }
    // A leading '/' belongs to the first segment.
    let (lead, body) = match s.strip_prefix('/') {
        Some(rest) => ("/", rest),
        None => ("", s),
    };
    let parts: Vec<&str> = body.split('/').collect();
    if parts.len() > MAX_SEGMENTS {
        return Err(TopicError::TooDeep { count: parts.len() });
    }
    let last = parts.len() - 1;
    let mut out = Vec::with_capacity(parts.len());
    for (index, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err(TopicError::EmptySegment {
                topic: s.into(),
                index,
            });
        }
        let wild = |reason| TopicError::Wildcard {
            topic: s.into(),
            reason,
        };
        let seg = match *part {
            "*" | "**" if !allow_wildcards => return Err(wild("wildcards only in patterns")),
            "*" => Segment::One,
            "**" if index == last => Segment::Rest,
            "**" => return Err(wild("`**` must be the last segment")),
            p if p.contains('*') => return Err(wild("`*` must be a whole segment")),
            p if index == 0 => Segment::Literal(format!("{lead}{p}").into()),
            p => Segment::Literal(p.into()),
        };
        out.push(seg);
    }
    if let Some(Segment::Literal(first)) = out.first()
        && &**first == RESERVED
    {
        return Err(TopicError::Reserved);
    }
    Ok(out)
}

/// A concrete topic path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(String);

impl Topic {
    /// Parses and checks a topic path.
    pub fn new(s: impl Into<String>) -> Result<Self, TopicError> {
        let s = s.into();
        split(&s, false)?;
        Ok(Self(s))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the topic is `prefix` or lies below it (`a/b` is under `a`
    /// and under `a/b`, not under `a/` or `a/bc`). The empty prefix
    /// contains everything.
    pub fn is_under(&self, prefix: &str) -> bool {
        let prefix = prefix.trim_end_matches('/');
        prefix.is_empty()
            || self.0 == prefix
            || (self.0.starts_with(prefix) && self.0.as_bytes().get(prefix.len()) == Some(&b'/'))
    }

    fn segments(&self) -> impl Iterator<Item = &str> {
        let (lead, body) = match self.0.strip_prefix('/') {
            Some(rest) => (true, rest),
            None => (false, self.0.as_str()),
        };
        let mut first = true;
        let full = &self.0;
        body.split('/').map(move |seg| {
            if first && lead {
                first = false;
                // Include the leading '/' in the first segment.
                &full[..seg.len() + 1]
            } else {
                first = false;
                seg
            }
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A subscription pattern: a topic path with optional `*` and `**`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

impl Pattern {
    /// Parses and checks a pattern.
    pub fn new(s: impl Into<String>) -> Result<Self, TopicError> {
        let text = s.into();
        let segments = split(&text, true)?;
        Ok(Self { text, segments })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern has a wildcard.
    pub fn is_wildcard(&self) -> bool {
        self.segments
            .iter()
            .any(|s| !matches!(s, Segment::Literal(_)))
    }

    /// The concrete topic, when the pattern has no wildcard.
    pub fn as_topic(&self) -> Option<Topic> {
        (!self.is_wildcard()).then(|| Topic(self.text.clone()))
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut segs = topic.segments();
        for want in &self.segments {
            match want {
                Segment::Rest => return segs.next().is_some(),
                Segment::One => {
                    if segs.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if segs.next() != Some(&**l) {
                        return false;
                    }
                }
            }
        }
        segs.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Pattern {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl From<Topic> for Pattern {
    fn from(t: Topic) -> Self {
        // A valid topic is a valid pattern.
        let segments = t
            .segments()
            .map(|s| Segment::Literal(s.into()))
            .collect::<Vec<_>>();
        Self {
            text: t.0,
            segments,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Node<V> {
    literal: HashMap<Box<str>, Node<V>>,
    one: Option<Box<Node<V>>>,
    /// Values of patterns ending in `**` at this node.
    rest: Vec<V>,
    /// Values of patterns ending exactly here.
    end: Vec<V>,
}

impl<V> Node<V> {
    fn new() -> Self {
        Self {
            literal: HashMap::new(),
            one: None,
            rest: Vec::new(),
            end: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.one.is_none() && self.rest.is_empty() && self.end.is_empty()
    }
}

/// Many patterns, each with a value, matched against a topic in time
/// proportional to the topic's depth and the number of wildcard branches,
/// not to the number of patterns.
#[derive(Debug, Clone)]
pub struct Matcher<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for Matcher<V> {
    fn default() -> Self {
        Self {
            root: Node::new(),
            len: 0,
        }
    }
}

impl<V: PartialEq + Clone> Matcher<V> {
    /// An empty matcher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries (pattern, value) stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` under `pattern`; returns false if that pair was there.
    pub fn insert(&mut self, pattern: &Pattern, value: V) -> bool {
        let mut node = &mut self.root;
        let mut slot = None;
        for seg in &pattern.segments {
            match seg {
                Segment::Literal(l) => {
                    node = node.literal.entry(l.clone()).or_insert_with(Node::new)
                }
                Segment::One => node = node.one.get_or_insert_with(|| Box::new(Node::new())),
                Segment::Rest => {
                    slot = Some(());
                    break;
                }
            }
        }
        let list = if slot.is_some() {
            &mut node.rest
        } else {
            &mut node.end
        };
        if list.contains(&value) {
            return false;
        }
        list.push(value);
        self.len += 1;
        true
    }

    /// Removes `value` from `pattern`; returns whether it was there.
    pub fn remove(&mut self, pattern: &Pattern, value: &V) -> bool {
        fn walk<V: PartialEq>(node: &mut Node<V>, segs: &[Segment], value: &V) -> bool {
            match segs.split_first() {
                None => remove_from(&mut node.end, value),
                Some((Segment::Rest, _)) => remove_from(&mut node.rest, value),
                Some((Segment::One, tail)) => {
                    let Some(child) = node.one.as_mut() else {
                        return false;
                    };
                    let removed = walk(child, tail, value);
                    if child.is_empty() {
                        node.one = None;
                    }
                    removed
                }
                Some((Segment::Literal(l), tail)) => {
                    let Some(child) = node.literal.get_mut(l) else {
                        return false;
                    };
                    let removed = walk(child, tail, value);
                    if child.is_empty() {
                        node.literal.remove(l);
                    }
                    removed
                }
            }
        }
        fn remove_from<V: PartialEq>(list: &mut Vec<V>, value: &V) -> bool {
            match list.iter().position(|v| v == value) {
                Some(i) => {
                    list.swap_remove(i);
                    true
                }
                None => false,
            }
        }
        let removed = walk(&mut self.root, &pattern.segments, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Calls `f` with the value of every pattern that matches `topic`.
    pub fn for_each_match(&self, topic: &Topic, mut f: impl FnMut(&V)) {
        let segs: Vec<&str> = topic.segments().collect();
        fn walk<V>(node: &Node<V>, segs: &[&str], f: &mut dyn FnMut(&V)) {
            let Some((head, tail)) = segs.split_first() else {
                node.end.iter().for_each(&mut *f);
                return;
            };
            // `**` here matches the remaining (non-empty) segments.
            node.rest.iter().for_each(&mut *f);
            if let Some(child) = node.literal.get(*head) {
                walk(child, tail, f);
            }
            if let Some(child) = &node.one {
                walk(child, tail, f);
            }
        }
        walk(&self.root, &segs, &mut f);
    }

    /// The values of every pattern that matches `topic`.
    pub fn matches(&self, topic: &Topic) -> Vec<V> {
        let mut out = Vec::new();
        self.for_each_match(topic, |v| out.push(v.clone()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }
    fn p(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }

    #[test]
    fn topics_are_checked() {
        assert!(Topic::new("blocks/eu/shard-3").is_ok());
        assert!(Topic::new("/eth2/beacon_block/ssz").is_ok());
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert!(matches!(
            Topic::new("a//b"),
            Err(TopicError::EmptySegment { index: 1, .. })
        ));
        assert!(matches!(
            Topic::new("a/"),
            Err(TopicError::EmptySegment { .. })
        ));
        assert!(matches!(
            Topic::new("a/*"),
            Err(TopicError::Wildcard { .. })
        ));
        assert!(matches!(Topic::new("a b"), Err(TopicError::BadChar { .. })));
        assert!(matches!(
            Topic::new("a/x*"),
            Err(TopicError::Wildcard { .. })
        ));
        assert_eq!(Topic::new("_bh/topics"), Err(TopicError::Reserved));
        assert!(matches!(
            Topic::new("x".repeat(257)),
            Err(TopicError::TooLong { .. })
        ));
        assert!(matches!(
            Topic::new(vec!["a"; 17].join("/")),
            Err(TopicError::TooDeep { .. })
        ));
        assert!(matches!(
            Pattern::new("a/**/b"),
            Err(TopicError::Wildcard { .. })
        ));
        assert!(Pattern::new("**").is_ok());
    }

    #[test]
    fn patterns_match() {
        let cases = [
            ("blocks/*/shard-3", "blocks/eu/shard-3", true),
            ("blocks/*/shard-3", "blocks/eu/x/shard-3", false),
            ("blocks/*/shard-3", "blocks/shard-3", false),
            ("blocks/**", "blocks/eu", true),
            ("blocks/**", "blocks/eu/shard-3", true),
            ("blocks/**", "blocks", false),
            ("blocks/**", "blocksx/eu", false),
            ("*/eu/**", "blocks/eu/a/b", true),
            ("**", "a", true),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("/a/*", "/a/b", true),
            ("/a/*", "a/b", false),
            ("*", "/a", true),
        ];
        for (pat, topic, want) in cases {
            assert_eq!(p(pat).matches(&t(topic)), want, "{pat} ~ {topic}");
            let mut m = Matcher::new();
            m.insert(&p(pat), 1);
            assert_eq!(
                !m.matches(&t(topic)).is_empty(),
                want,
                "matcher {pat} ~ {topic}"
            );
        }
    }

    #[test]
    fn matcher_agrees_with_patterns_and_removes() {
        let pats = ["a/**", "a/*", "a/b", "*/b", "*/*/c", "**", "a/b/c", "x/**"];
        let topics = ["a/b", "a/b/c", "x/y", "q/b", "a", "z/z/c"];
        let mut m = Matcher::new();
        for (i, s) in pats.iter().enumerate() {
            assert!(m.insert(&p(s), i));
            assert!(!m.insert(&p(s), i));
        }
        assert_eq!(m.len(), pats.len());
        for topic in topics {
            let mut got = m.matches(&t(topic));
            got.sort();
            let want: Vec<usize> = (0..pats.len())
                .filter(|&i| p(pats[i]).matches(&t(topic)))
                .collect();
            assert_eq!(got, want, "{topic}");
        }
        for (i, s) in pats.iter().enumerate() {
            assert!(m.remove(&p(s), &i));
            assert!(!m.remove(&p(s), &i));
        }
        assert!(m.is_empty());
        assert!(m.root.is_empty(), "removal prunes the trie");
    }

    #[test]
    fn prefixes() {
        assert!(t("a/b").is_under("a"));
        assert!(t("a/b").is_under("a/"));
        assert!(t("a/b").is_under("a/b"));
        assert!(!t("a/bc").is_under("a/b"));
        assert!(t("a").is_under(""));
    }
}

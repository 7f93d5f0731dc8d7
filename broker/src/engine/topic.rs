//! Topic matching over AMQP-style keys: words separated by `.`, `*` matches exactly one word,
//! `#` matches zero or more. One trie per topic exchange, updated per binding, so a publish
//! walks the key's words once instead of testing every pattern.

use std::collections::HashMap;

/// A trie of binding patterns; each pattern ends at a node that holds its values.
#[derive(Debug)]
pub struct TopicTrie<V> {
    root: Node<V>,
}

#[derive(Debug)]
struct Node<V> {
    words: HashMap<Box<str>, Node<V>>,
    star: Option<Box<Node<V>>>,
    hash: Option<Box<Node<V>>>,
    values: Vec<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            words: HashMap::new(),
            star: None,
            hash: None,
            values: Vec::new(),
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.values.is_empty()
            && self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }
}

impl<V> Default for TopicTrie<V> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
        }
    }
}

/// The words of a key or pattern. The empty string has no words (not one empty word), as in
/// RabbitMQ: `*` does not match the empty key, and the empty pattern matches only it.
fn split_words(s: &str) -> Vec<&str> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('.').collect()
    }
}

impl<V: PartialEq + Clone> TopicTrie<V> {
    pub fn insert(&mut self, pattern: &str, value: V) {
        let mut node = &mut self.root;
        for word in split_words(pattern) {
            node = match word {
                "*" => node.star.get_or_insert_with(Default::default),
                "#" => node.hash.get_or_insert_with(Default::default),
                w => node.words.entry(w.into()).or_default(),
            };
        }
        if !node.values.contains(&value) {
            // Most patterns are bound once (one MQTT subscription each): room for one first,
            // not the 4 a growing Vec starts with.
            if node.values.capacity() == 0 {
                node.values.reserve_exact(1);
            }
            node.values.push(value);
        }
    }

    /// Removes `value` bound with `pattern`; prunes emptied branches.
    pub fn remove(&mut self, pattern: &str, value: &V) {
        remove_at(&mut self.root, &split_words(pattern), value);
    }

    /// Calls `f` for each value whose pattern matches `key`; a value bound by several matching
    /// patterns is reported once per pattern (callers deduplicate).
    pub fn for_each_match(&self, key: &str, mut f: impl FnMut(&V)) {
        walk(&self.root, &split_words(key), &mut f);
    }
}

fn remove_at<V: PartialEq>(node: &mut Node<V>, words: &[&str], value: &V) {
    let Some((first, rest)) = words.split_first() else {
        node.values.retain(|v| v != value);
        return;
    };
    match *first {
        "*" => {
            if let Some(child) = node.star.as_mut() {
                remove_at(child, rest, value);
                if child.is_empty() {
                    node.star = None;
                }
            }
        }
        "#" => {
            if let Some(child) = node.hash.as_mut() {
                remove_at(child, rest, value);
                if child.is_empty() {
                    node.hash = None;
                }
            }
        }
        w => {
            if let Some(child) = node.words.get_mut(w) {
                remove_at(child, rest, value);
                if child.is_empty() {
                    node.words.remove(w);
                }
            }
        }
    }
}

fn walk<V>(node: &Node<V>, words: &[&str], f: &mut impl FnMut(&V)) {
    if let Some(hash) = &node.hash {
        // `#` swallows zero or more words: try every suffix.
        for skip in 0..=words.len() {
            walk(hash, &words[skip..], f);
        }
    }
    match words.split_first() {
        None => node.values.iter().for_each(f),
        Some((first, rest)) => {
            if let Some(child) = node.words.get(*first) {
                walk(child, rest, f);
            }
            if let Some(star) = &node.star {
                walk(star, rest, f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious matcher, as the oracle for the trie.
    fn naive(pattern: &str, key: &str) -> bool {
        fn m(p: &[&str], k: &[&str]) -> bool {
            match p.split_first() {
                None => k.is_empty(),
                Some((&"#", rest)) => (0..=k.len()).any(|i| m(rest, &k[i..])),
                Some((&"*", rest)) => !k.is_empty() && m(rest, &k[1..]),
                Some((w, rest)) => k.first() == Some(w) && m(rest, &k[1..]),
            }
        }
        m(&split_words(pattern), &split_words(key))
    }

    fn matches(trie: &TopicTrie<usize>, key: &str) -> Vec<usize> {
        let mut out = Vec::new();
        trie.for_each_match(key, |v| out.push(*v));
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn trie_agrees_with_naive_matcher() {
        let patterns = [
            "a.b", "a.*", "a.#", "#", "*", "*.b", "a.#.b", "#.b", "a.*.c", "", "a..b", "*.*",
            "#.#", "a.b.#", "x",
        ];
        let keys = [
            "a.b", "a", "a.b.c", "a.x.b", "b", "", "a..b", "a.b.b", "x.y.z", "a.c.c", "x",
        ];
        let mut trie = TopicTrie::default();
        for (i, p) in patterns.iter().enumerate() {
            trie.insert(p, i);
        }
        for key in keys {
            let expected: Vec<usize> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| naive(p, key))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(matches(&trie, key), expected, "key {key:?}");
        }
    }

    #[test]
    fn remove_prunes_and_stops_matching() {
        let mut trie = TopicTrie::default();
        trie.insert("a.*.c", 1);
        trie.insert("a.#", 2);
        trie.remove("a.*.c", &1);
        assert_eq!(matches(&trie, "a.b.c"), vec![2]);
        trie.remove("a.#", &2);
        assert!(trie.root.is_empty());
    }

    #[test]
    fn empty_key_has_no_words() {
        let mut trie = TopicTrie::default();
        for (i, p) in ["*", "#.*", "", "#"].iter().enumerate() {
            trie.insert(p, i);
        }
        assert_eq!(matches(&trie, ""), vec![2, 3]);
        assert_eq!(matches(&trie, "a"), vec![0, 1, 3]);
    }
}

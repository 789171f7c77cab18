//! Topic-exchange routing-key matching: words separated by `.`, `*` matches
//! exactly one word and `#` zero or more, as AMQP 0-9-1 topic exchanges do.

/// Whether `routing_key` matches the binding `pattern`.
pub fn matches(pattern: &str, routing_key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = routing_key.split('.').collect();
    match_words(&pattern, &key)
}

fn match_words(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| match_words(rest, &key[skip..])),
        Some((&word, rest)) => match key.split_first() {
            Some((&first, key_rest)) => (word == "*" || word == first) && match_words(rest, key_rest),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn star_is_one_word_hash_is_any() {
        assert!(matches("storage.*", "storage.get"));
        assert!(!matches("storage.*", "storage.get.extra"));
        assert!(!matches("storage.*", "storage"));
        assert!(matches("notify.storage.*.*", "notify.storage.Host.created"));
        assert!(matches("notify.#", "notify.storage.Host.created"));
        assert!(matches("#", "anything.at.all"));
        assert!(matches("jobs.clusterexec.#", "jobs.clusterexec"));
        assert!(matches("jobs.investigate", "jobs.investigate"));
        assert!(!matches("jobs.investigate", "jobs.watcher"));
    }
}

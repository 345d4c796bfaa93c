//! Transcripts as search queries, and how far one is from what was said.

/// Lower case, letters and digits only (apostrophes inside words kept: "don't"), hyphens and
/// other punctuation as spaces, single spaces: the form a search index and a word error rate
/// compare.
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let inside_word = |j: Option<usize>| j.and_then(|j| chars.get(j)).is_some_and(|c| c.is_alphanumeric());
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if (c == '\'' || c == '\u{2019}') && inside_word(i.checked_sub(1)) && inside_word(Some(i + 1)) {
            out.push('\'');
        } else if !out.ends_with(' ') && !out.is_empty() {
            out.push(' ');
        }
    }
    out.trim_end().to_string()
}

/// Word error rate of `hypothesis` against `reference` after [`normalise`]: (substitutions +
/// deletions + insertions) / reference words. An empty reference gives 0 for an empty
/// hypothesis and 1 otherwise.
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let (r, h) = (normalise(reference), normalise(hypothesis));
    let r: Vec<&str> = r.split_whitespace().collect();
    let h: Vec<&str> = h.split_whitespace().collect();
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    word_errors(&r, &h) as f64 / r.len() as f64
}

/// Levenshtein distance over words.
pub fn word_errors(reference: &[&str], hypothesis: &[&str]) -> usize {
    let mut previous: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut current = vec![i + 1; hypothesis.len() + 1];
        for (j, h) in hypothesis.iter().enumerate() {
            let substitution = previous[j] + usize::from(r != h);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[hypothesis.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalising_keeps_words_and_drops_punctuation() {
        assert_eq!(normalise(" The quick brown-fax jumped, over!  "), "the quick brown fax jumped over");
        assert_eq!(normalise("Don't STOP 4K TVs"), "don't stop 4k tvs");
        assert_eq!(normalise("'quoted'"), "quoted");
        assert_eq!(normalise("Café — crème"), "café crème");
        assert_eq!(normalise("..."), "");
    }

    #[test]
    fn word_error_rate_counts_each_kind_of_error() {
        assert_eq!(word_error_rate("red running shoes", "Red running shoes."), 0.0);
        // One substitution of three words.
        assert!((word_error_rate("red running shoes", "bed running shoes") - 1.0 / 3.0).abs() < 1e-12);
        // One deletion, one insertion.
        assert!((word_error_rate("a b c d", "a c d e") - 0.5).abs() < 1e-12);
        // Everything inserted: more than 100% is possible.
        assert!((word_error_rate("a", "x y z") - 3.0).abs() < 1e-12);
        assert_eq!(word_error_rate("", ""), 0.0);
        assert_eq!(word_error_rate("", "noise"), 1.0);
    }
}

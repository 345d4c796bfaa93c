//! Input metrics of texts: length, out-of-vocabulary share and language, logged per item so
//! the monitor watches them like any other input feature.

use std::collections::HashSet;

use crate::config::TextInput;

/// A language code whatlang knows (ISO 639-3, e.g. `eng`), normalised; `None` when unknown.
pub fn language_code(code: &str) -> Option<&'static str> {
    whatlang::Lang::from_code(code.to_ascii_lowercase()).map(|l| l.code())
}

/// The words of a text: runs of letters and digits, lower-cased.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase)
}

/// Reads a vocabulary file: one word per line, lower-cased; blank lines ignored.
pub fn read_vocabulary(text: &str) -> HashSet<String> {
    text.lines().map(|l| l.trim().to_lowercase()).filter(|l| !l.is_empty()).collect()
}

/// The metrics of one text, named without the input's prefix: `chars`, `words`,
/// `oov_share` (NaN, i.e. missing, for a text without words; absent without a vocabulary),
/// and with `languages` set, `lang.<code>` for each and `lang.other`, 1 for the detected
/// language and 0 for the others.
pub fn text_metrics(text: &str, settings: Option<&TextInput>) -> Vec<(String, f64)> {
    let words: Vec<String> = words(text).collect();
    let mut metrics =
        vec![("chars".to_string(), text.chars().count() as f64), ("words".to_string(), words.len() as f64)];
    let Some(settings) = settings else { return metrics };
    if let Some(vocabulary) = &settings.words {
        let unknown = words.iter().filter(|w| !vocabulary.contains(w.as_str())).count();
        let share = if words.is_empty() { f64::NAN } else { unknown as f64 / words.len() as f64 };
        metrics.push(("oov_share".into(), share));
    }
    if !settings.languages.is_empty() {
        let detected = whatlang::detect_lang(text).map(|l| l.code());
        let mut known = false;
        for code in &settings.languages {
            let this = language_code(code) == detected && detected.is_some();
            known |= this;
            metrics.push((format!("lang.{}", code.to_ascii_lowercase()), f64::from(u8::from(this))));
        }
        metrics.push(("lang.other".into(), f64::from(u8::from(!known))));
    }
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vocabulary: &[&str]) -> TextInput {
        TextInput {
            vocabulary: Some("vocabulary.txt".into()),
            languages: vec!["eng".into(), "deu".into()],
            words: Some(std::sync::Arc::new(vocabulary.iter().map(|w| w.to_string()).collect())),
        }
    }

    fn get(metrics: &[(String, f64)], name: &str) -> f64 {
        metrics.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name} in {metrics:?}")).1
    }

    #[test]
    fn length_vocabulary_and_language_of_a_text() {
        let s = settings(&["win", "a", "free", "phone"]);
        let m = text_metrics("Win a FREE phone, click the link now and claim your prize today!", Some(&s));
        assert_eq!(get(&m, "chars"), 64.0);
        assert_eq!(get(&m, "words"), 13.0);
        assert_eq!(get(&m, "oov_share"), 9.0 / 13.0);
        assert_eq!((get(&m, "lang.eng"), get(&m, "lang.deu"), get(&m, "lang.other")), (1.0, 0.0, 0.0));
        let german =
            text_metrics("Heute war das Wetter wirklich schön und wir sind lange spazieren gegangen", Some(&s));
        assert_eq!((get(&german, "lang.eng"), get(&german, "lang.deu"), get(&german, "lang.other")), (0.0, 1.0, 0.0));
        let japanese = text_metrics("今日はとても良い天気でしたので公園を散歩しました", Some(&s));
        assert_eq!((get(&japanese, "lang.eng"), get(&japanese, "lang.other")), (0.0, 1.0));
        assert_eq!(get(&japanese, "chars"), 24.0);
    }

    #[test]
    fn an_empty_text_has_no_oov_share_and_no_language() {
        let m = text_metrics("", Some(&settings(&["a"])));
        assert_eq!((get(&m, "chars"), get(&m, "words")), (0.0, 0.0));
        assert!(get(&m, "oov_share").is_nan());
        assert_eq!(get(&m, "lang.other"), 1.0);
        assert_eq!(text_metrics("two words", None).len(), 2, "without settings: lengths only");
    }

    #[test]
    fn language_codes_are_checked() {
        assert_eq!(language_code("ENG"), Some("eng"));
        assert_eq!(language_code("english"), None);
        assert_eq!(read_vocabulary("Win\n\n free \n"), ["win".to_string(), "free".to_string()].into());
    }
}

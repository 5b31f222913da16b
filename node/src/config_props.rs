//! Property tests of config parsing ([`NodeConfig::parse`]): random text and the documented
//! sample with its bytes, lines or values damaged give a config or an error, never a panic;
//! the sample's own values round-trip through TOML.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::NodeConfig;

/// Values a careless edit or a damaged file leaves where the sample has a number or string.
fn arb_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just(u64::MAX.to_string()),
        Just(i64::MAX.to_string()),
        Just(i64::MIN.to_string()),
        Just("18446744073709551616".to_string()),
        Just("1e309".to_string()),
        Just("nan".to_string()),
        Just("-inf".to_string()),
        Just("\"\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("\"[::1]:0\"".to_string()),
        any::<u64>().prop_map(|v| v.to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        "\"[ -~]{0,12}\"",
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    /// Replace the value of the n-th `key = value` line.
    Value(usize, String),
    /// Remove the n-th line.
    DropLine(usize),
    /// Repeat the n-th line.
    RepeatLine(usize),
    /// Flip a bit of the text (lossily back to UTF-8).
    FlipBit(usize, u8),
    /// Cut the text.
    Truncate(usize),
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), arb_value()).prop_map(|(n, v)| Edit::Value(n, v)),
        1 => any::<usize>().prop_map(Edit::DropLine),
        1 => any::<usize>().prop_map(Edit::RepeatLine),
        1 => (any::<usize>(), 0u8..8).prop_map(|(a, b)| Edit::FlipBit(a, b)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

/// The sample with its comments uncommented (so that every optional section is present) and
/// with `edits` applied.
fn edited_sample(edits: &[Edit]) -> String {
    let mut lines: Vec<String> = NodeConfig::sample().lines().map(str::to_string).collect();
    for e in edits {
        match e {
            Edit::Value(n, v) => {
                let assignments: Vec<usize> = (0..lines.len())
                    .filter(|&i| !lines[i].trim_start().starts_with('#') && lines[i].contains(" = "))
                    .collect();
                if let Some(&i) = assignments.get(n % assignments.len().max(1)) {
                    if let Some((k, _)) = lines[i].split_once(" = ") {
                        lines[i] = format!("{k} = {v}");
                    }
                }
            }
            Edit::DropLine(n) if !lines.is_empty() => {
                lines.remove(n % lines.len());
            }
            Edit::RepeatLine(n) if !lines.is_empty() => {
                let i = n % lines.len();
                lines.insert(i, lines[i].clone());
            }
            Edit::FlipBit(at, bit) => {
                let mut b = lines.join("\n").into_bytes();
                if !b.is_empty() {
                    let at = at % b.len();
                    b[at] ^= 1 << bit;
                }
                lines = String::from_utf8_lossy(&b).lines().map(str::to_string).collect();
            }
            Edit::Truncate(at) => {
                let text = lines.join("\n");
                let mut cut = at % (text.len() + 1);
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                lines = text[..cut].lines().map(str::to_string).collect();
            }
            _ => {}
        }
    }
    lines.join("\n")
}

proptest! {
    #[test]
    fn random_text_parses_or_is_refused(text in "(?s).{0,512}") {
        let _ = NodeConfig::parse(&text);
    }

    #[test]
    fn random_toml_shaped_text_parses_or_is_refused(
        text in "(\\[[a-z_]{1,10}\\]\n|[a-z_]{1,24} = ([0-9]{1,22}|\"[ -~]{0,10}\"|true|\\[[0-9, ]{0,10}\\])\n){0,24}"
    ) {
        let _ = NodeConfig::parse(&text);
    }

    #[test]
    fn an_edited_sample_parses_or_is_refused(edits in proptest::collection::vec(arb_edit(), 1..4)) {
        if let Ok(cfg) = NodeConfig::parse(&edited_sample(&edits)) {
            // What parses also validates, and survives a round trip through TOML.
            prop_assert!(cfg.validate().is_ok());
            let again = NodeConfig::parse(&toml::to_string(&cfg).unwrap()).unwrap();
            prop_assert_eq!(again, cfg);
        }
    }
}

#[test]
fn deeply_nested_values_are_refused_not_a_stack_overflow() {
    for depth in [100, 1_000, 100_000] {
        let text = format!("site = {}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(NodeConfig::parse(&text).is_err(), "depth {depth}");
        let text = format!("site = {}1{}", "{a = ".repeat(depth), "}".repeat(depth));
        assert!(NodeConfig::parse(&text).is_err(), "depth {depth}");
    }
}

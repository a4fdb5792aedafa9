//! Property tests over the document parser: whatever the input, parsing
//! and validation return a value or errors with positions, never a panic.

use std::path::Path;

use proptest::prelude::*;

/// Fragments that real documents are made of, so that generated inputs
/// reach deep into validation rather than stopping at the YAML syntax.
const FRAGMENTS: &[&str] = &[
    "name: x\n",
    "schemaVersion: 1.0\n",
    "phases:\n",
    "  - name: build\n",
    "    steps:\n",
    "      - name: s\n",
    "        action: ExecuteBash\n",
    "        action: CreateFile\n",
    "        inputs:\n",
    "          commands: [\"echo {{ p }}\"]\n",
    "          - path: /x\n",
    "        loop:\n",
    "          for: {start: 1, end: 3, updateBy: 1}\n",
    "          forEach: [a, b]\n",
    "        if:\n",
    "          and:\n",
    "            - not:\n",
    "                fileExists: /x\n",
    "          stringEquals: a\n",
    "          value: '{{ build.s.outputs.stdout }}'\n",
    "        maxAttempts: 2\n",
    "        timeoutSeconds: -1\n",
    "        timeoutSeconds: 9223372036854775807\n",
    "        timeoutSeconds: 99999999999999999999\n",
    "        timeoutSeconds: 86401\n",
    "        onFailure: Ignore\n",
    "parameters:\n",
    "  - p:\n",
    "      type: string\n",
    "      default: d\n",
    "constants:\n",
    "- ",
    "  ",
    ": ",
    "{{",
    "}}",
    "[",
    "]",
    "{",
    "}",
    "&a ",
    "*a ",
    "'",
    "\"",
    "\n",
    "#",
    "|\n",
    ">-\n",
    "\t",
    "\u{feff}",
];

/// `fuzz.yaml:LINE:COL: ...`, with a line and a column from 1.
fn has_position(error: &str) -> bool {
    let Some(rest) = error.strip_prefix("fuzz.yaml:") else {
        return false;
    };
    let mut parts = rest.splitn(3, ':');
    let number = |p: Option<&str>| {
        p.and_then(|p| p.parse::<usize>().ok())
            .is_some_and(|n| n >= 1)
    };
    number(parts.next()) && number(parts.next())
}

fn fragments() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..40).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = kiln_toe::parse_str(Path::new("fuzz.yaml"), &text);
    }

    #[test]
    fn document_shaped_text_never_panics(text in fragments()) {
        if let Err(diagnostics) = kiln_toe::parse_str(Path::new("fuzz.yaml"), &text) {
            prop_assert!(!diagnostics.0.is_empty());
            for e in &diagnostics.0 {
                prop_assert!(has_position(&e.to_string()), "{e}");
            }
        }
    }

    #[test]
    fn variable_rendering_never_panics(text in "[{} a-z.\\[\\]0-9]{0,80}") {
        let _ = kiln_toe::vars::render(&text, |_| Some(String::from("v")));
        let _ = kiln_toe::vars::references(&text);
    }
}

#[test]
fn an_absurd_step_timeout_is_refused_with_its_line() {
    for absurd in ["9223372036854775807", "86401", "4611686018427387904"] {
        let text = format!(
            "name: x\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: s\n        action: ExecuteBash\n        timeoutSeconds: {absurd}\n        inputs:\n          commands: [\"true\"]\n"
        );
        let errors = kiln_toe::parse_str(Path::new("c.yaml"), &text)
            .expect_err("an absurd timeout is refused")
            .to_string();
        assert!(
            errors.contains("c.yaml:8:25: phases[build].steps[s].timeoutSeconds:")
                && errors.contains("longer than the 86400"),
            "{errors}"
        );
    }
    let day = "name: x\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: s\n        action: ExecuteBash\n        timeoutSeconds: 86400\n        inputs:\n          commands: [\"true\"]\n";
    assert!(kiln_toe::parse_str(Path::new("c.yaml"), day).is_ok());
}

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
                prop_assert!(e.to_string().starts_with("fuzz.yaml:"));
            }
        }
    }

    #[test]
    fn variable_rendering_never_panics(text in "[{} a-z.\\[\\]0-9]{0,80}") {
        let _ = kiln_toe::vars::render(&text, |_| Some(String::from("v")));
        let _ = kiln_toe::vars::references(&text);
    }
}

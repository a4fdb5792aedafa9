//! Property tests over the documents a pipeline reads besides components
//! (kiln-toe has those): kiln.yaml, recipes and buildspecs. Whatever the
//! input, each parser returns a value or errors that name the file, line
//! and column, never a panic.

use std::path::Path;

use proptest::prelude::*;

/// `FILE:LINE:COL: ...`, with a line and a column from 1.
fn has_position(file: &str, error: &str) -> bool {
    let Some(rest) = error.strip_prefix(&format!("{file}:")) else {
        return false;
    };
    let mut parts = rest.splitn(3, ':');
    let number = |p: Option<&str>| {
        p.and_then(|p| p.parse::<usize>().ok())
            .is_some_and(|n| n >= 1)
    };
    number(parts.next()) && number(parts.next())
}

/// Durations as documents write them, the absurd ones included.
const DURATIONS: &[&str] = &[
    "500ms",
    "0s",
    "90",
    "10m",
    "1h30m",
    "25h",
    "1441m",
    "18446744073709551615",
    "18446744073709551616",
    "5124095576030431h",
    "4294967295h4294967295h",
    "9999999999999999999999ms",
    "-1s",
    "1.5h",
    "h",
    "",
];

const KILN_YAML: &[&str] = &[
    "name: web\n",
    "image:\n",
    "  parent: busybox\n",
    "  version: 1.2.3\n",
    "  components: [ { path: c.yaml } ]\n",
    "  tests: { timeout: @ }\n",
    "  tests:\n",
    "    timeout: @\n",
    "execution_mode: QUEUED\n",
    "triggers: { on_commit: true, schedule: \"rate(1 hour)\" }\n",
    "source: { poll_interval: @ }\n",
    "build: { timeout: @ }\n",
    "deploy:\n",
    "  group: g\n",
    "  capacity: { min: 1, max: 3, desired: 2 }\n",
    "  health: { path: /health, interval: @, timeout: @, grace_period: @ }\n",
    "  rolling: { max_batch: 1, min_in_service: 1, batch_timeout: @, pause: @ }\n",
    "  deregistration_delay: @\n",
    "  idle_timeout: @\n",
    "  timeout: @\n",
    "retention: { keep_images: 18446744073709551616 }\n",
    "version: { parameter: /v, start: 1.0.0 }\n",
];

const RECIPE: &[&str] = &[
    "name: web\n",
    "version: 1.2.3\n",
    "version: 99999999999999999999.0.0\n",
    "parent: busybox\n",
    "components:\n",
    "  - path: c.yaml\n",
    "    parameters: { a: b }\n",
    "tests:\n",
    "  enabled: true\n",
    "  timeout: @\n",
    "port: 99999999999\n",
    "entrypoint: [ /bin/sh ]\n",
];

const BUILDSPEC: &[&str] = &[
    "version: 0.2\n",
    "env:\n",
    "  variables: { A: b }\n",
    "  shell: bash\n",
    "phases:\n",
    "  build:\n",
    "    commands:\n",
    "      - echo hi\n",
    "    on-failure: CONTINUE\n",
    "    timeout-in-minutes: 99999999999999999999\n",
    "artifacts:\n",
    "  files: [ '**/*' ]\n",
    "  base-directory: out\n",
    "  secondary-artifacts:\n",
    "    a: { files: [ x ] }\n",
    "reports:\n",
    "cache:\n",
    "  paths: [ x ]\n",
    "batch:\n",
];

/// Shapes that YAML itself is made of, so that the parsers see broken
/// syntax as well as broken fields.
const SYNTAX: &[&str] = &[
    "- ",
    "  ",
    ": ",
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
    "!!binary ",
    "? ",
    "---\n",
];

/// Lines of a document in their order, some left out, with a few pieces
/// of bare syntax put in anywhere: mostly well-formed YAML, so that the
/// fields and their values are what gets tested.
fn documents(fields: &'static [&'static str]) -> impl Strategy<Value = String> {
    (
        prop::sample::subsequence(fields, 0..=fields.len()),
        prop::collection::vec(
            (any::<prop::sample::Index>(), prop::sample::select(SYNTAX)),
            0..3,
        ),
        prop::collection::vec(prop::sample::select(DURATIONS), 30),
    )
        .prop_map(|(lines, syntax, durations)| {
            let mut parts: Vec<&str> = lines;
            for (at, piece) in syntax {
                parts.insert(at.index(parts.len() + 1), piece);
            }
            let mut text = parts.concat();
            for d in durations {
                if !text.contains('@') {
                    break;
                }
                text = text.replacen('@', d, 1);
            }
            text
        })
}

fn recipe(text: &str) -> Result<(), Vec<String>> {
    let file = Path::new("recipe.yaml");
    let mut c = kiln_doc::diag::Collector::new(file);
    let root = match kiln_doc::yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            c.push(e.pos, "", e.message);
            return Err(c.errors.iter().map(|e| e.to_string()).collect());
        }
    };
    let recipe = kiln_bake::recipe::from_node(&root, file, "", None, false, &mut c);
    match recipe {
        Some(_) if c.errors.is_empty() => Ok(()),
        _ => Err(c.errors.iter().map(|e| e.to_string()).collect()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5_000, ..ProptestConfig::default() })]

    #[test]
    fn kiln_yaml_never_panics_and_errors_have_positions(text in documents(KILN_YAML)) {
        if let Err(d) = kiln_pipeline::config::settings(&text, Path::new("kiln.yaml")) {
            prop_assert!(!d.0.is_empty());
            for e in &d.0 {
                prop_assert!(has_position("kiln.yaml", &e.to_string()), "{e}");
            }
        }
    }

    #[test]
    fn recipes_never_panic_and_errors_have_positions(text in documents(RECIPE)) {
        if let Err(errors) = recipe(&text) {
            prop_assert!(!errors.is_empty());
            for e in &errors {
                prop_assert!(has_position("recipe.yaml", e), "{e}");
            }
        }
    }

    #[test]
    fn buildspecs_never_panic_and_errors_have_positions(text in documents(BUILDSPEC)) {
        if let Err(d) = kiln_build::buildspec::parse(&text, Path::new("buildspec.yml")) {
            prop_assert!(!d.0.is_empty());
            for e in &d.0 {
                prop_assert!(has_position("buildspec.yml", &e.to_string()), "{e}");
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = kiln_pipeline::config::settings(&text, Path::new("kiln.yaml"));
        let _ = recipe(&text);
        let _ = kiln_build::buildspec::parse(&text, Path::new("buildspec.yml"));
    }

    #[test]
    fn durations_never_panic_and_stay_within_a_year(text in "[0-9hms ]{0,60}") {
        if let Ok(d) = kiln_pipeline::config::parse_duration(&text) {
            prop_assert!(d <= kiln_doc::duration::MAX);
        }
    }
}

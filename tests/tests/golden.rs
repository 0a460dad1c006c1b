//! The golden replay output (`observer/tests/data/mixed.ndjson`) against `docs/schema/`: the
//! byte-exact format the replay test pins is also the one the schemas describe.

use std::path::PathBuf;

use observer_tests::observer::{of_dataset, parse_lines};

#[test]
fn golden_output_matches_the_schemas() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../observer/tests/data/mixed.ndjson");
    let text = std::fs::read_to_string(&path).expect("mixed.ndjson");
    // parse_lines validates every line against its dataset's schema.
    let lines = parse_lines(&text);
    assert_eq!(lines.len(), text.lines().count(), "every line parsed");
    for dataset in ["observer.connection", "observer.state", "observer.loss"] {
        assert!(
            !of_dataset(&lines, dataset).is_empty(),
            "{dataset} lines in the golden file"
        );
    }
}

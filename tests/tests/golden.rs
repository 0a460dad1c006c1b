//! The golden replay output (`observer/tests/data/mixed.ndjson`) against `docs/schema/`: the
//! byte-exact format the replay test pins is also the one the schemas describe.

use observer_tests::observer::{of_dataset, parse_lines};

#[test]
fn golden_output_matches_the_schemas() {
    // Embedded: the test binaries also run in QEMU guests, without the source tree.
    let text = include_str!("../../observer/tests/data/mixed.ndjson");
    // parse_lines validates every line against its dataset's schema.
    let lines = parse_lines(text);
    assert_eq!(lines.len(), text.lines().count(), "every line parsed");
    for dataset in ["observer.connection", "observer.state", "observer.loss"] {
        assert!(
            !of_dataset(&lines, dataset).is_empty(),
            "{dataset} lines in the golden file"
        );
    }
}

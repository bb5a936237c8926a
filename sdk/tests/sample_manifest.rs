//! The Rust sample's signed manifest names this SDK at this version: bumping the SDK without its
//! sample's `sdk:` line would ship a sample that says it was built with another.

#[test]
fn the_rust_sample_names_this_sdk_and_version() {
    let manifest = include_str!("../../examples/event-logger/plugin.yaml");
    let line = format!(
        "\nsdk: {{name: {}, version: {}}}\n",
        airlock_sdk::NAME,
        airlock_sdk::VERSION
    );
    assert!(
        manifest.contains(&line),
        "{line:?} in examples/event-logger/plugin.yaml"
    );
}

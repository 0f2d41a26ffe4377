//! What every property test of the crate shares (issue 8 item 15): the image readers'
//! targets (image/fuzz_tests.rs) and the cluster's (the mDNS parser in cluster/mdns.rs,
//! the TXT judge in cluster/txt.rs, each beside the private items it reaches).
use proptest::prelude::ProptestConfig;

/// 64 cases in the ordinary test run; `PROPTEST_CASES` for a longer one.
pub(crate) fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    ProptestConfig::with_cases(cases)
}

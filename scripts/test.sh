#!/usr/bin/env bash
# The whole test suite, as CI runs it: install the system packages the tests drive for
# real, then formatting, lints and every test. Needs root (network namespaces, sandboxes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked "$@"

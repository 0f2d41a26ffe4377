use crate::cli::{DiscoverArgs, Global};

pub fn run(_global: &Global, _args: &DiscoverArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`discover` is not written yet")
}

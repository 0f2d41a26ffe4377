use crate::cli::{BuildArgs, Global};

pub fn run(_global: &Global, _args: &BuildArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`build` is not written yet")
}

use crate::cli::{Global, StatusArgs};

pub fn run(_global: &Global, _args: &StatusArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`status` is not written yet")
}

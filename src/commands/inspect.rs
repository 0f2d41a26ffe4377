use crate::cli::{Global, InspectArgs};

pub fn run(_global: &Global, _args: &InspectArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`inspect` is not written yet")
}

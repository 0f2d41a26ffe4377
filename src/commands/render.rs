use crate::cli::{Global, RenderArgs};

pub fn run(global: &Global, _args: &RenderArgs) -> anyhow::Result<i32> {
    let _plan = super::load_plan(global)?;
    anyhow::bail!("`render` is not written yet")
}

use crate::cli::{FetchKubeconfigArgs, Global};

pub fn run(_global: &Global, _args: &FetchKubeconfigArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`fetch_kubeconfig` is not written yet")
}

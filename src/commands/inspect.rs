//! `chocoimg inspect`: what an image holds, read back from the image itself.
use crate::cli::{Global, InspectArgs};
use crate::image;

pub fn run(_global: &Global, args: &InspectArgs) -> anyhow::Result<i32> {
    let found = image::inspect(&args.image)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(0);
    }
    let id = &found.identity;
    println!("image:     {}", args.image.display());
    println!("cluster:   {}", id.cluster);
    println!("node:      {} ({})", id.node, id.role);
    println!("K3s:       {}", id.k3s_version);
    println!("Ubuntu:    {} ({})", id.ubuntu_release, found.iso_release);
    println!("boots:     \"{}\"", found.boot_title);
    println!("kernel:    {}", found.kernel_line);
    println!("built by:  chocoimg {}", id.chocoimg_version);
    Ok(0)
}

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
    match (&found.reinstall_title, &found.reinstall_kernel_line) {
        (Some(title), Some(kernel)) => {
            println!("guard:     stops on a machine that holds a chocoimg node");
            println!("reinstall: \"{title}\" ({kernel})");
        }
        // Built before the reinstall guard: say what such a stick does.
        _ => println!("guard:     none (a machine that boots this stick is reinstalled)"),
    }
    println!("built by:  chocoimg {}", id.chocoimg_version);
    Ok(0)
}

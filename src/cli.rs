//! The command line's clap types, and nothing else: `main.rs` dispatches each command
//! to its function in `commands/`, which take these arguments.
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Unattended Ubuntu 22.04 USB installers for a two-node K3s cluster on an Eero LAN.
///
/// The whole job: `chocoimg build --all`, `chocoimg flash --node NAME` for each node's
/// USB stick, boot each mini-PC from its stick and walk away; then
/// `chocoimg fetch-kubeconfig` and `kubectl get nodes`. Nodes find each other over mDNS: no IP addresses to type.
#[derive(Debug, Parser)]
#[command(
    name = "chocoimg",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Cluster profile (YAML) [default: profiles/chocolandiadc-mvp.yaml]
    #[arg(
        short,
        long,
        global = true,
        env = "CHOCOIMG_PROFILE",
        value_name = "FILE"
    )]
    pub profile: Option<PathBuf>,
}

impl Global {
    pub fn profile_path(&self) -> PathBuf {
        self.profile
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::profile::DEFAULT_PROFILE))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the profile and report every problem at once (writes nothing).
    Validate(ValidateArgs),
    /// Write a node's autoinstall seed (user-data, meta-data) to a folder, to read or test.
    Render(RenderArgs),
    /// Build a node's flashable USB image: out/<cluster>/<node>.img.
    Build(BuildArgs),
    /// Show what an image holds: cluster, node, role, K3s version, Ubuntu release.
    Inspect(InspectArgs),
    /// Find this cluster's servers on the LAN over mDNS and check their proofs.
    ///
    /// Lists every `_k3s._tcp` server heard (all three in `mode: ha`), marked verified
    /// (its proof checks with this cluster's secrets and an address holds its CA), foreign
    /// cluster, or forged, with its CA. In `mode: ha`, the first time, records the
    /// cluster's CA beside the secrets (out/<cluster>/cluster-ca.sha256): later builds of
    /// servers join it, never start a new cluster. Exit 0 when verified servers answered, 4 when none did, 1 when
    /// servers with different CAs answered (split brain), 2 when the only CA is not the
    /// recorded one.
    Discover(DiscoverArgs),
    /// Fetch a server's admin kubeconfig over SSH, verify it, and merge it for kubectl.
    ///
    /// Finds master1 (or takes --server), checks its /cacerts against the announced hash,
    /// logs in with SSH pinning the host key from the cluster's secrets, checks the
    /// kubeconfig's CA, points it at master1's address and names it after the cluster,
    /// then merges it into kubectl's kubeconfig as kubectl would (the file of $KUBECONFIG
    /// that defines the context, else its first existing file, else ~/.kube/config; 0600,
    /// with a backup, other entries kept). Re-run it when master1's address changes. In
    /// `mode: ha` it tries the verified servers in profile order until one serves it, and
    /// points the kubeconfig at that one. Records the cluster's CA as `discover` does.
    /// Exit 0 written, 4 master1 not found, 1 a check failed (nothing written).
    FetchKubeconfig(FetchKubeconfigArgs),
    /// Report the cluster (ready/degraded/unavailable) and each node from the K3s API.
    ///
    /// Each node is Ready, NotReady or Unknown (from its Ready condition; a profile node
    /// the API does not know is Unknown). Exit 0 ready, 3 degraded, 4 unavailable.
    Status(StatusArgs),
    /// Watch every node come up: a live table of the stages the nodes announce.
    ///
    /// Each installed node announces its bring-up stage over mDNS (`_chocoimg-node._tcp`)
    /// with the time it entered it and a proof only holders of the cluster's agent token
    /// can make: first-boot, installing-k3s, then on the server starting-k3s and
    /// k3s-running, on agents waiting-for-server, joining and joined; or failed with a
    /// reason (K3s's install or unit failed, no master1 found for 15 minutes). Forged,
    /// replayed (older) and other clusters' announcements are shown as such and change
    /// nothing. One row per profile node: not seen yet / stage / address / since (the
    /// node's clock, UTC). On a terminal the table is redrawn in place; otherwise one
    /// line per change. With several servers (`mode: ha`) it also shows the servers' join
    /// order: the order they reached k3s-running, by the times they announced.
    /// Exit 0 once every node is up (k3s-running, joined: Ready in K3s),
    /// 1 as soon as a node reports failed (naming it and the reason), 4 on --timeout.
    Watch(WatchArgs),
    /// Write a node's image to a USB stick, then read the stick back to verify it.
    ///
    /// `chocoimg flash --node master1` asks which stick (or give it: `... /dev/sdb`);
    /// `chocoimg flash IMAGE DEVICE` writes any image file. `--list` shows the sticks.
    /// Refused, with nothing written (exit 2): the disk holding `/`, a disk with anything
    /// mounted (unless --unmount), an internal disk (unless --allow-fixed-disk), one
    /// over 256 GB (unless --allow-large), one smaller than the image, a partition, a
    /// file (unless --to-file). It shows the stick's model, size, serial and what will
    /// be lost, and asks you to type its name (--yes skips that). The stick's first MiB
    /// is zeroed first and written last, so a stick interrupted half-way (Ctrl-C, pulled
    /// out) cannot boot half an installer. Then it reads the stick back and checks its
    /// SHA-256 against `<node>.img.sha256` ("verified"); on macOS it ejects the stick.
    /// Exit 0 verified, 2 refused, 1 the write or the verification failed (or Ctrl-C).
    Flash(FlashArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// bash: `chocoimg completions bash > ~/.local/share/bash-completion/completions/chocoimg`.
    /// zsh: write it as `_chocoimg` into a folder of $fpath. fish: write it to
    /// ~/.config/fish/completions/chocoimg.fish.
    Completions(CompletionsArgs),
    /// Print the manual page as roff: `chocoimg man | man -l -`, or `chocoimg man build`
    /// for one command's page.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct ValidateArgs {}

/// Which nodes a command acts on.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct NodeSelection {
    /// The node, by hostname (e.g. master1)
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Every node in the profile
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub nodes: NodeSelection,
    /// Folder to write into; each node's seed goes in DIR/<node>/
    /// [default: out/<cluster>/<node>/seed/]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Start a new cluster: forget the CA this laptop recorded from the running cluster
    /// (out/<cluster>/cluster-ca.sha256) so the servers built now may start a cluster
    /// again. Only after wiping every server of the old one: a server built without the
    /// record, while old servers are off, starts a second cluster beside them
    #[arg(long)]
    pub new_cluster: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub nodes: NodeSelection,
    /// Use this local Ubuntu ISO instead of downloading it (still checked by SHA-256)
    #[arg(long, value_name = "PATH")]
    pub iso: Option<PathBuf>,
    /// Also put K3s's airgap image tarball on the stick (first start needs no registry)
    #[arg(long)]
    pub airgap: bool,
    /// Replace an existing image of the same node
    #[arg(long)]
    pub force: bool,
    /// Start a new cluster: forget the CA this laptop recorded from the running cluster
    /// (out/<cluster>/cluster-ca.sha256) so the servers built now may start a cluster
    /// again. Only after wiping every server of the old one: a server built without the
    /// record, while old servers are off, starts a second cluster beside them
    #[arg(long)]
    pub new_cluster: bool,
    /// Accept artifacts whose hashes differ from the lock file and record the new ones
    /// (review the lock file's diff before committing it)
    #[arg(long)]
    pub update_lock: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image file (or a USB stick's device, e.g. /dev/sdb)
    pub image: PathBuf,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// Seconds to listen for announcements
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Stop at the first verified server instead of listening for the whole timeout (with
    /// several servers, the others may not be listed yet)
    #[arg(long)]
    pub first: bool,
}

#[derive(Debug, Args)]
pub struct FetchKubeconfigArgs {
    /// Skip discovery and use this server address (IP or host name)
    #[arg(long, value_name = "ADDRESS")]
    pub server: Option<String>,
    /// Write to this file instead of kubectl's (a new file holds only this cluster; an
    /// existing one is merged, with a backup)
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Name of the context, cluster and user to write [default: the cluster's name]
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Make it kubectl's current context
    #[arg(long)]
    pub use_context: bool,
    /// Replace a context (cluster, user) of the same name that reaches another cluster;
    /// without it that is refused
    #[arg(long)]
    pub overwrite_context: bool,
    /// Seconds to wait for discovery
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// SSH port on the server
    #[arg(long, default_value_t = 22)]
    pub ssh_port: u16,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Give up after this many seconds (exit 4) [default: wait until every node is up
    /// or one failed]
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Print one JSON object per line for each change, then one for the end
    #[arg(long)]
    pub json: bool,
    /// Once every node is up, fetch and merge the kubeconfig as `fetch-kubeconfig` does
    #[arg(long)]
    pub fetch_kubeconfig: bool,
}

impl FetchKubeconfigArgs {
    /// `fetch-kubeconfig` with no flags (its own defaults, from one place: clap).
    pub fn defaults() -> FetchKubeconfigArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: FetchKubeconfigArgs,
        }
        Only::parse_from(["fetch-kubeconfig"]).args
    }
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The command whose page to print (e.g. build) [default: chocoimg's own page]
    #[arg(value_name = "COMMAND")]
    pub command: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Kubeconfig to use [default: the file of $KUBECONFIG (else ~/.kube/config) that defines the context]
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Context to use [default: the cluster's name]
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FlashArgs {
    /// The node whose image to write: out/<cluster>/<node>.img, checked against its .sha256
    #[arg(long, value_name = "NAME", conflicts_with = "list")]
    pub node: Option<String>,
    /// With --node: [DEVICE]; without: IMAGE [DEVICE]. DEVICE is the whole stick
    /// (/dev/sdb, /dev/disk4); without it, choose from the list on a terminal
    #[arg(value_name = "IMAGE|DEVICE", num_args = 0..=2)]
    pub paths: Vec<PathBuf>,
    /// List the USB sticks and removable disks plugged in (vendor, model, size, serial,
    /// what is mounted), and write nothing
    #[arg(long)]
    pub list: bool,
    /// With --list: print JSON
    #[arg(long, requires = "list")]
    pub json: bool,
    /// Do not ask to type the device name (for scripts; every refusal still applies)
    #[arg(long, conflicts_with = "list")]
    pub yes: bool,
    /// Unmount the stick's mounted partitions first (Linux umount, macOS diskutil unmountDisk)
    #[arg(long, conflicts_with = "list")]
    pub unmount: bool,
    /// Allow a disk that is neither removable nor USB (an internal or virtual disk)
    #[arg(long, conflicts_with = "list")]
    pub allow_fixed_disk: bool,
    /// Allow a disk over 256 GB (a USB stick rarely is; a backup drive often is)
    #[arg(long, conflicts_with = "list")]
    pub allow_large: bool,
    /// Allow DEVICE to be a regular file (created if missing), e.g. a VM's disk
    #[arg(long, conflicts_with = "list")]
    pub to_file: bool,
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}

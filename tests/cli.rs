//! The command line's own documentation, generated from the clap model: shell
//! completions loaded by the real shells, manual pages rendered by the real `man`.
use crate::support::{chocoimg, require_tool};
use std::process::{Command, Output};

fn stdout_of(args: &[&str]) -> String {
    let out = chocoimg().args(args).output().unwrap();
    assert!(out.status.success(), "chocoimg {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `shell args...` with HOME in `home` (no user config read); its stdout.
fn shell(shell: &str, args: &[&str], home: &std::path::Path) -> String {
    let out = Command::new(shell)
        .args(args)
        .env("HOME", home)
        .output()
        .unwrap();
    ok(out, shell)
}

fn ok(out: Output, what: &str) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// `chocoimg completions <shell>` written to `dir/<file>`, once the shell is installed.
fn completion_script(shell: &str, dir: &std::path::Path, file: &str) -> std::path::PathBuf {
    require_tool(shell);
    let script = dir.join(file);
    std::fs::write(&script, stdout_of(&["completions", shell])).unwrap();
    script
}

/// bash loads the script and completes `chocoimg bu` to `build` and `build --a` to `--all`
/// and `--airgap`.
#[test]
fn bash_completes_commands_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let script = completion_script("bash", dir.path(), "chocoimg.bash");
    let complete = |words: &str| {
        let probe = format!(
            "source {}\nCOMP_WORDS=({words})\nCOMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\nCOMP_LINE=\"${{COMP_WORDS[*]}}\"\nCOMP_POINT=${{#COMP_LINE}}\n_chocoimg chocoimg \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        shell("bash", &["--norc", "--noprofile", "-c", &probe], dir.path())
    };
    let cmds = complete("chocoimg bu");
    assert_eq!(cmds.lines().collect::<Vec<_>>(), ["build"], "{cmds}");
    let flags = complete("chocoimg build --a");
    let mut flags: Vec<&str> = flags.lines().collect();
    flags.sort();
    assert_eq!(flags, ["--airgap", "--all"]);
}

/// zsh loads the script as a completion function (compinit, compdef) without complaint.
#[test]
fn zsh_loads_the_completion() {
    require_tool("zsh");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("_chocoimg"),
        stdout_of(&["completions", "zsh"]),
    )
    .unwrap();
    let probe = format!(
        "fpath=({} $fpath)\nautoload -U compinit && compinit -u -d {}/zcompdump\n\
         print -r -- ${{_comps[chocoimg]}}",
        dir.path().display(),
        dir.path().display()
    );
    let out = shell("zsh", &["-f", "-c", &probe], dir.path());
    assert_eq!(out.trim(), "_chocoimg");
}

/// fish completes `chocoimg fetch` to `fetch-kubeconfig` and knows `status --json`.
#[test]
fn fish_completes_commands_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let script = completion_script("fish", dir.path(), "chocoimg.fish");
    let probe = format!(
        "source {}; complete -C'chocoimg fetch'; complete -C'chocoimg status --js'",
        script.display()
    );
    let out = shell("fish", &["--no-config", "-c", &probe], dir.path());
    let first: Vec<&str> = out.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(first, ["fetch-kubeconfig", "--json"], "{out}");
}

/// An unknown shell is refused by clap with the list of shells (exit 2).
#[test]
fn completions_name_the_shells() {
    let out = chocoimg().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bash") && err.contains("zsh") && err.contains("fish"),
        "{err}"
    );
}

/// `man -l` renders chocoimg(1) and chocoimg-build(1) from the same model as `--help`.
#[test]
fn man_pages_render() {
    require_tool("man");
    let dir = tempfile::tempdir().unwrap();
    let render = |args: &[&str], file: &str| {
        let page = dir.path().join(file);
        std::fs::write(&page, stdout_of(args)).unwrap();
        ok(
            Command::new("man")
                .arg("-l")
                .arg(&page)
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "100")
                .env("LANG", "C.UTF-8")
                .output()
                .unwrap(),
            "man -l",
        )
    };
    let main = render(&["man"], "chocoimg.1");
    for want in [
        "NAME",
        "chocoimg",
        "SUBCOMMANDS",
        "fetch-kubeconfig",
        "--profile",
    ] {
        assert!(main.contains(want), "no {want:?} in chocoimg(1):\n{main}");
    }
    let build = render(&["man", "build"], "chocoimg-build.1");
    for want in [
        "chocoimg-build",
        "--airgap",
        "--force",
        "Replace an existing image",
    ] {
        assert!(
            build.contains(want),
            "no {want:?} in chocoimg-build(1):\n{build}"
        );
    }
    let out = chocoimg().args(["man", "bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus") && err.contains("build"), "{err}");
}

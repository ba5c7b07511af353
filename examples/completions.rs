//! Writes the bash, zsh and fish completions from the clap definitions.
//!
//! `cargo run --example completions -- DIR` writes
//! `DIR/xen-block-hotplug.bash`, `DIR/_xen-block-hotplug` (zsh) and
//! `DIR/xen-block-hotplug.fish`; packaging/build.sh calls it and installs
//! them where each shell's completion loader looks. An example, like
//! manpage.rs, keeps clap_complete (a dev-dependency) out of the installed
//! binary, and generating them from `Cli` keeps them in step with it.

use std::path::PathBuf;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::{generate, Shell};
use xen_block_hotplug::cli::Cli;

const NAME: &str = "xen-block-hotplug";

/// clap_complete 4.6 names a subcommand's case label after the command
/// with each `-` turned into `__subcmd__` (`xen__subcmd__block__...`), but
/// sets `cmd` with `-` turned into `__` (`xen__block__hotplug__subcmd__...`):
/// for a hyphenated command nothing after the subcommand completed
/// (`cleanup --dry<TAB>` offered nothing). Spell the labels as `cmd` is set.
fn fix_bash_case_labels(script: &[u8]) -> anyhow::Result<Vec<u8>> {
    let text = std::str::from_utf8(script).context("the bash completion is not UTF-8")?;
    let wrong = format!("{}__subcmd__", NAME.replace('-', "__subcmd__"));
    let right = format!("{}__subcmd__", NAME.replace('-', "__"));
    Ok(text.replace(&wrong, &right).into_bytes())
}

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .context("usage: completions OUT_DIR")?,
    );
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The names the loaders look for: bash-completion by command name, zsh
    // by `_command` on $fpath, fish by `command.fish`; the packages install
    // each under that name without the `.bash` suffix for bash.
    for (shell, file) in [
        (Shell::Bash, format!("{NAME}.bash")),
        (Shell::Zsh, format!("_{NAME}")),
        (Shell::Fish, format!("{NAME}.fish")),
    ] {
        let mut out = Vec::new();
        generate(shell, &mut Cli::command(), NAME, &mut out);
        if shell == Shell::Bash {
            out = fix_bash_case_labels(&out)?;
        }
        let path = dir.join(file);
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

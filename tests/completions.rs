//! `pgconvoy completions SHELL` and `pgconvoy man`: generated from the command line,
//! printed without any cluster.yaml, a bad shell name is bad input.

mod common;

use common::cli::Scratch;

#[test]
fn completions_for_every_shell_without_a_config() {
    let s = Scratch::new();
    assert!(!s.path().join("cluster.yaml").exists());
    for shell in ["bash", "zsh", "fish"] {
        let run = s.run(&["completions", shell]);
        run.expect(0);
        let out = run.stdout();
        assert!(
            out.contains("upgrade"),
            "{shell} completion lacks upgrade:\n{out}"
        );
        assert!(
            out.contains("dry-run"),
            "{shell} completion lacks --dry-run:\n{out}"
        );
        assert!(out.contains("metrics-file"), "{shell}:\n{out}");
    }
    for shell in ["elvish", "powershell"] {
        let run = s.run(&["completions", shell]);
        run.expect(0);
        assert!(run.stdout().contains("upgrade"), "{shell}");
    }
}

#[test]
fn a_bad_shell_name_is_bad_input() {
    let s = Scratch::new();
    s.run(&["completions", "tcsh"]).expect(2).says("tcsh");
    s.run(&["completions"]).expect(2);
}

#[test]
fn bash_can_load_the_completion_script() {
    let s = Scratch::new();
    let script = s.run(&["completions", "bash"]).expect(0).stdout();
    let path = s.write("pgconvoy.bash", &script);
    let Ok(out) = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p pgconvoy", path.display()))
        .output()
    else {
        eprintln!("skipped: no bash");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pgconvoy"));
}

#[test]
fn man_prints_roff_without_a_config() {
    let s = Scratch::new();
    let run = s.run(&["man"]);
    run.expect(0);
    let page = run.stdout();
    assert!(page.contains(".TH pgconvoy 1"), "{page}");
    assert!(page.contains(".SH SYNOPSIS"));
    assert!(
        page.contains("pgconvoy\\-upgrade(1)"),
        "subcommands listed:\n{page}"
    );
    assert!(page.contains("Exit codes"));

    let run = s.run(&["man", "upgrade"]);
    run.expect(0);
    let page = run.stdout();
    assert!(
        page.contains(".TH pgconvoy\\-upgrade 1") || page.contains(".TH pgconvoy-upgrade 1"),
        "{page}"
    );
    assert!(page.contains("dry\\-run"), "{page}");

    s.run(&["man", "nonsense"]).expect(2).says("upgrade");
}

#[test]
fn man_renders_with_man_when_it_is_installed() {
    let s = Scratch::new();
    let page = s.run(&["man"]).expect(0).stdout();
    let path = s.write("pgconvoy.1", &page);
    let Ok(out) = std::process::Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(&path)
        .env("MANWIDTH", "100")
        .output()
    else {
        eprintln!("skipped: no man");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SYNOPSIS"), "{text}");
}
